"""Experiment configs: one `get_config(arg)` file per experiment."""


def parse_variants(arg: str | None, known: tuple[str, ...], default: str) -> list[str]:
  """Splits a `--config=file.py:a,b` argument into known variant names."""
  names = [n.strip() for n in (arg or default).split(",") if n.strip()]
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f"unknown config variant(s) {unknown}; known: {list(known)}")
  return names
