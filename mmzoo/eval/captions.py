r"""Caption evaluation as coco-caption does it, without Java: BLEU-1..4, ROUGE-L, CIDEr-D.

`evaluate_captions(references, predictions)` tokenizes every caption as coco-caption
(pycocoevalcap 1.2's `COCOEvalCap.evaluate`; Chen et al. 2015, arXiv:1504.00325) does,
with its PTB tokenizer reproduced in `ptb_tokenizer`, and scores the tokens with the
reproductions in `caption_metrics`, so the numbers equal coco-caption's. METEOR (Banerjee
and Lavie 2005) and SPICE (Anderson et al. 2016) have no Java-free form: they run
pycocoevalcap's own Java scorers when asked and available.

Command line:

  python -m mmzoo.eval.captions --references R.json --predictions P.json \
      [--per_image OUT.json] [--tokenize ptb|none] [--intersection] \
      [--meteor auto|on|off] [--spice off|auto|on]

* R: a COCO caption annotation file (`{"annotations": [{"image_id", "caption"}, ...]}`)
  or `{image_id: [caption, ...]}`.
* P: COCO results (`[{"image_id", "caption"}, ...]`) or `{image_id: [caption]}` (or
  `{image_id: caption}`): exactly one caption per image.
* Image ids may be integers or strings; 123 and "123" are the same image. Every predicted
  image needs references and every referenced image a prediction, unless
  `--intersection`, which evaluates the images that have both.
* Prints one JSON object: Bleu_1..Bleu_4, ROUGE_L, CIDEr (and METEOR, SPICE when run) on
  coco-caption's scale (0-1; CIDEr ~0-10). `--per_image` writes {image_id: {metric: value}}.
* `--meteor auto` (the default) adds METEOR when `java` is on PATH and pycocoevalcap is
  installed (its JVM takes a few seconds to start), else notes on stderr that it is
  omitted; `on` makes its absence an error; `off` skips it. `--spice` likewise, off by
  default: SPICE is slow, needs ~8 GB and Stanford CoreNLP 3.6.0's jars in
  pycocoevalcap's `spice/lib`, which pycocoevalcap downloads on first use; this module
  never downloads them and reports them missing instead.
* Problems with the input print one line, `error: <file>: <problem>`, and exit 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from mmzoo.errors import InputError
from mmzoo.eval import caption_metrics, ptb_tokenizer, registry

METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr")
_SHOWN_IDS = 5


def _canonical_id(image_id: Any, where: str) -> str:
  if isinstance(image_id, bool) or not isinstance(image_id, int | str):
    raise InputError(f"{where}: image id must be an integer or a string, got {image_id!r}")
  return str(image_id)


def _some(ids: Sequence[str]) -> str:
  shown = ", ".join(ids[:_SHOWN_IDS])
  return shown + (f", ... ({len(ids)} in all)" if len(ids) > _SHOWN_IDS else "")


def _images(count: int, kind: str) -> str:
  return f"1 {kind} image has" if count == 1 else f"{count} {kind} images have"


def _pycocoevalcap_dir() -> str | None:
  spec = importlib.util.find_spec("pycocoevalcap")
  if spec is None or not spec.submodule_search_locations:
    return None
  return list(spec.submodule_search_locations)[0]


def meteor_unavailable() -> str | None:
  """Why pycocoevalcap's METEOR cannot run here, or None when it can."""
  if shutil.which("java") is None:
    return "java is not on PATH"
  root = _pycocoevalcap_dir()
  if root is None:
    return "pycocoevalcap is not installed (pip install pycocoevalcap==1.2)"
  if not os.path.exists(os.path.join(root, "meteor", "meteor-1.5.jar")):
    return f"pycocoevalcap has no {os.path.join(root, 'meteor', 'meteor-1.5.jar')}"
  return None


def spice_unavailable() -> str | None:
  """Why pycocoevalcap's SPICE cannot run here, or None when it can (never downloads)."""
  if shutil.which("java") is None:
    return "java is not on PATH"
  root = _pycocoevalcap_dir()
  if root is None:
    return "pycocoevalcap is not installed (pip install pycocoevalcap==1.2)"
  lib = os.path.join(root, "spice", "lib")
  missing = [name for name in ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
             if not os.path.exists(os.path.join(lib, name))]
  if missing:
    return (f"its Stanford CoreNLP models are missing ({', '.join(missing)} in {lib}; "
            "pycocoevalcap's spice/get_stanford_models.py downloads them)")
  return None


def _meteor(references: list[list[str]], candidates: list[str]) -> tuple[float, list[float]]:
  from pycocoevalcap.meteor.meteor import Meteor

  gts = {i: refs for i, refs in enumerate(references)}
  res = {i: [c] for i, c in enumerate(candidates)}
  scorer = Meteor()
  try:
    score, scores = scorer.compute_score(gts, res)
  finally:
    del scorer  # Its __del__ stops the JVM.
  return float(score), [float(s) for s in scores]


def _spice(references: list[list[str]], candidates: list[str]) -> tuple[float, list[float]]:
  from pycocoevalcap.spice.spice import Spice

  # SPICE sorts image ids; zero-padded strings keep the sorted order the input order.
  keys = [f"{i:09d}" for i in range(len(candidates))]
  gts = dict(zip(keys, references, strict=True))
  res = {k: [c] for k, c in zip(keys, candidates, strict=True)}
  score, scores = Spice().compute_score(gts, res)
  return float(score), [float(s["All"]["f"]) for s in scores]


def evaluate_captions(references: Mapping[Any, Sequence[str]],
                      predictions: Mapping[Any, str | Sequence[str]], tokenize: str = "ptb",
                      intersection: bool = False, meteor: bool = False,
                      spice: bool = False) -> tuple[dict[str, float], dict[Any, dict[str, float]]]:
  """coco-caption's caption metrics.

  Args:
    references: {image_id: [reference caption, ...]}.
    predictions: {image_id: caption} or {image_id: [caption]} (exactly one).
    tokenize: "ptb" to tokenize every caption as coco-caption does (lower-cased, PTB
      tokens, punctuation dropped), "none" for captions that are already tokenized.
    intersection: evaluate the images that have both references and a prediction,
      instead of requiring the two sets of ids to be equal.
    meteor, spice: also run pycocoevalcap's METEOR / SPICE (Java; see
      `meteor_unavailable`, `spice_unavailable`).

  Returns:
    ({metric: corpus value}, {image_id: {metric: value}}), image ids as in `references`
    (ids 123 and "123" name the same image).

  Raises:
    InputError: mismatched ids (without `intersection`), a caption that is not a string,
      an image without references, or METEOR / SPICE asked for but unavailable.
  """
  if tokenize not in ("ptb", "none"):
    raise InputError(f"tokenize must be 'ptb' or 'none', got {tokenize!r}")
  refs_by_id: dict[str, tuple[Any, list[str]]] = {}
  for image_id, captions in references.items():
    key = _canonical_id(image_id, "references")
    if key in refs_by_id:
      raise InputError(f"references: image {key} appears twice")
    if isinstance(captions, str) or not isinstance(captions, Sequence) or not captions:
      raise InputError(f"references: image {key}: expected a non-empty list of captions")
    for caption in captions:
      if not isinstance(caption, str):
        raise InputError(f"references: image {key}: caption is not a string: {caption!r:.80}")
    refs_by_id[key] = (image_id, list(captions))
  preds_by_id: dict[str, str] = {}
  for image_id, caption in predictions.items():
    key = _canonical_id(image_id, "predictions")
    if key in preds_by_id:
      raise InputError(f"predictions: image {key} appears twice")
    if not isinstance(caption, str):
      if isinstance(caption, Sequence) and len(caption) != 1:
        raise InputError(f"predictions: image {key}: expected exactly one caption, "
                         f"got {len(caption)}")
      if isinstance(caption, Sequence):
        caption = caption[0]
      if not isinstance(caption, str):
        raise InputError(f"predictions: image {key}: caption is not a string: {caption!r:.80}")
    preds_by_id[key] = caption

  unreferenced = [k for k in preds_by_id if k not in refs_by_id]
  unpredicted = [k for k in refs_by_id if k not in preds_by_id]
  ids = [k for k in refs_by_id if k in preds_by_id]
  if (unreferenced or unpredicted) and not intersection:
    problems = []
    if unreferenced:
      problems.append(f"{_images(len(unreferenced), 'predicted')} no references: "
                      f"{_some(unreferenced)}")
    if unpredicted:
      problems.append(f"{_images(len(unpredicted), 'referenced')} no prediction: "
                      f"{_some(unpredicted)}")
    raise InputError("; ".join(problems) + " (pass --intersection / intersection=True to "
                     f"evaluate the {len(ids)} image(s) that have both)")
  if not ids:
    raise InputError("no image has both references and a prediction")

  refs = [refs_by_id[k][1] for k in ids]
  cands = [preds_by_id[k] for k in ids]
  if tokenize == "ptb":
    # As coco-caption: references and predictions are tokenized as two separate files.
    refs = list(ptb_tokenizer.tokenize_by_image(dict(zip(ids, refs, strict=True))).values())
    cands = ptb_tokenizer.tokenize(cands)

  metrics: dict[str, float] = {}
  per_image: dict[str, dict[str, float]] = {k: {} for k in ids}
  scores = caption_metrics.coco_scores(cands, refs)
  results = [(f"Bleu_{k + 1}", *scores[f"Bleu_{k + 1}"]) for k in range(4)]
  if meteor:
    reason = meteor_unavailable()
    if reason:
      raise InputError(f"METEOR was asked for but cannot run: {reason}")
    results.append(("METEOR", *_meteor(refs, cands)))
  results.append(("ROUGE_L", *scores["ROUGE_L"]))
  results.append(("CIDEr", *scores["CIDEr"]))
  if spice:
    reason = spice_unavailable()
    if reason:
      raise InputError(f"SPICE was asked for but cannot run: {reason}")
    results.append(("SPICE", *_spice(refs, cands)))
  for name, corpus, images in results:
    metrics[name] = float(corpus)
    for k, value in zip(ids, images, strict=True):
      per_image[k][name] = float(value)
  return metrics, {refs_by_id[k][0]: scores for k, scores in per_image.items()}


@registry.register("captions")
def evaluate_captions_task(task, params, mesh, split: str) -> dict[str, float]:
  """The "captions" evaluator: `task.caption_predictions(params, mesh, split)` returns
  ({image_id: [reference, ...]}, {image_id: caption}); coco-caption's metrics, Java-free."""
  references, predictions = task.caption_predictions(params, mesh, split)
  metrics, _ = evaluate_captions(references, predictions)
  return metrics


# ------------------------------------------------------------------------------------------
# Command line.


def _read_json(path: str) -> Any:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError:
    raise InputError(f"{path}: no such file") from None
  except IsADirectoryError:
    raise InputError(f"{path}: is a directory, not a JSON file") from None
  except OSError as e:
    raise InputError(f"{path}: {e.strerror or e}") from None
  except UnicodeDecodeError:
    raise InputError(f"{path}: not UTF-8 text") from None
  except json.JSONDecodeError as e:
    raise InputError(f"{path}: invalid JSON: {e.msg} at line {e.lineno} column {e.colno}") \
        from None


def _coco_pairs(path: str, items: Any, what: str) -> list[tuple[Any, Any]]:
  if not isinstance(items, list):
    raise InputError(f"{path}: {what} must be a list of {{\"image_id\", \"caption\"}} objects")
  pairs = []
  for i, item in enumerate(items):
    if not isinstance(item, dict) or "image_id" not in item or "caption" not in item:
      raise InputError(f"{path}: {what}[{i}] is not an object with \"image_id\" and "
                       f"\"caption\": {item!r:.80}")
    pairs.append((item["image_id"], item["caption"]))
  return pairs


def load_references(path: str) -> dict[Any, list[str]]:
  """{image_id: [captions]} from a COCO annotation file or a JSON {image_id: [captions]}."""
  data = _read_json(path)
  if not isinstance(data, dict):
    raise InputError(f"{path}: expected a COCO annotation file ({{\"annotations\": [...]}}) "
                     f"or {{image_id: [captions]}}, got a JSON {type(data).__name__}")
  try:
    if "annotations" in data:
      references: dict[str, tuple[Any, list]] = {}
      for image_id, caption in _coco_pairs(path, data["annotations"], "annotations"):
        key = _canonical_id(image_id, "image_id")
        references.setdefault(key, (image_id, []))[1].append(caption)
      out = {image_id: captions for image_id, captions in references.values()}
    else:
      out = {}
      for image_id, captions in data.items():
        if not isinstance(captions, list):
          raise InputError(f"image {image_id}: expected a list of captions, got "
                           f"{type(captions).__name__} (or give a COCO annotation file)")
        out[image_id] = captions
    if not out:
      raise InputError("no references")
    for image_id, captions in out.items():
      if not captions:
        raise InputError(f"image {image_id}: no reference captions")
      for caption in captions:
        if not isinstance(caption, str):
          raise InputError(f"image {image_id}: caption is not a string: {caption!r:.80}")
  except InputError as e:
    if str(e).startswith(f"{path}:"):
      raise
    raise InputError(f"{path}: {e}") from None
  return out


def load_predictions(path: str) -> dict[Any, str]:
  """{image_id: caption} from COCO results or a JSON {image_id: [caption]}."""
  data = _read_json(path)
  try:
    if isinstance(data, list):
      pairs = _coco_pairs(path, data, "results")
    elif isinstance(data, dict):
      pairs = []
      for image_id, captions in data.items():
        if isinstance(captions, list):
          if len(captions) != 1:
            raise InputError(f"image {image_id}: expected exactly one predicted caption, got "
                             f"{len(captions)}")
          captions = captions[0]
        pairs.append((image_id, captions))
    else:
      raise InputError(f"expected COCO results ([{{\"image_id\", \"caption\"}}, ...]) or "
                       f"{{image_id: [caption]}}, got a JSON {type(data).__name__}")
    if not pairs:
      raise InputError("no predictions")
    out: dict[Any, str] = {}
    seen: set[str] = set()
    for image_id, caption in pairs:
      key = _canonical_id(image_id, "image_id")
      if key in seen:
        raise InputError(f"image {key}: more than one predicted caption; expected exactly one")
      seen.add(key)
      if not isinstance(caption, str):
        raise InputError(f"image {key}: caption is not a string: {caption!r:.80}")
      out[image_id] = caption
  except InputError as e:
    if str(e).startswith(f"{path}:"):
      raise
    raise InputError(f"{path}: {e}") from None
  return out


def _resolve(name: str, mode: str, reason: str | None) -> bool:
  if mode == "off":
    return False
  if reason is None:
    return True
  if mode == "on":
    raise InputError(f"{name} was asked for (--{name.lower()}=on) but cannot run: {reason}")
  print(f"note: {name} omitted: {reason}", file=sys.stderr)
  return False


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m mmzoo.eval.captions",
      description="coco-caption's caption metrics (BLEU-1..4, ROUGE-L, CIDEr-D), Java-free.")
  parser.add_argument("--references", required=True,
                      help="COCO annotation file or JSON {image_id: [captions]}.")
  parser.add_argument("--predictions", required=True,
                      help="COCO results JSON or {image_id: [caption]}.")
  parser.add_argument("--per_image", help="Also write {image_id: {metric: value}} here.")
  parser.add_argument("--tokenize", choices=("ptb", "none"), default="ptb",
                      help="ptb: coco-caption's PTB tokenization (default); none: as given.")
  parser.add_argument("--intersection", action="store_true",
                      help="Evaluate the images that have both references and a prediction.")
  parser.add_argument("--meteor", choices=("auto", "on", "off"), default="auto",
                      help="pycocoevalcap's METEOR (Java): auto (default) runs it if possible.")
  parser.add_argument("--spice", choices=("auto", "on", "off"), default="off",
                      help="pycocoevalcap's SPICE (Java, slow, needs its models): default off.")
  args = parser.parse_args(argv)
  try:
    references = load_references(args.references)
    predictions = load_predictions(args.predictions)
    meteor = _resolve("METEOR", args.meteor, meteor_unavailable() if args.meteor != "off" else None)
    spice = _resolve("SPICE", args.spice, spice_unavailable() if args.spice != "off" else None)
    try:
      metrics, per_image = evaluate_captions(references, predictions, args.tokenize,
                                             args.intersection, meteor, spice)
    except InputError as e:
      raise InputError(f"{args.predictions}: {e}") from None
    if args.per_image:
      try:
        with open(args.per_image, "w", encoding="utf-8") as f:
          json.dump({str(k): v for k, v in per_image.items()}, f, indent=1)
      except OSError as e:
        raise InputError(f"{args.per_image}: {e.strerror or e}") from None
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(json.dumps(metrics, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
