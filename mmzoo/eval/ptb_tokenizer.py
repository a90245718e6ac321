"""The PTB tokenization of coco-caption, in pure Python.

coco-caption (pycocoevalcap, `tokenizer/ptbtokenizer.py`; Chen et al. 2015, "Microsoft COCO
Captions: Data Collection and Evaluation Server", arXiv:1504.00325) tokenizes every caption
with Stanford CoreNLP 3.4.1's `PTBTokenizer -preserveLines -lowerCase` (a JFlex lexer,
`edu/stanford/nlp/process/PTBLexer.flex`) and then drops the tokens in its `PUNCTUATIONS`
list. This module reproduces that without Java: a longest-match lexer whose rules follow
PTBLexer's (ties go to the earlier rule, a trailing context counts towards the length, as in
JFlex), with the same normalizations:

  * contractions split off: "don't" -> "do n't", "it's" -> "it 's", "gonna" -> "gon na",
    "cannot" -> "can not"; possessives: "dog's" -> "dog 's", "dogs'" -> "dogs '";
  * brackets become -LRB- -RRB- -LSB- -RSB- -LCB- -RCB- (then lower-cased to "-lrb-" etc.,
    which coco-caption does NOT drop, since its list holds the upper-case forms);
  * double quotes become `` and '' (dropped), dashes "--", ellipses "...";
  * abbreviations and acronyms keep their period ("mr.", "a.m.", "u.s.", "st."); a final
    period is split off ("dog." -> "dog ."); numbers stay whole ("3.5", "10:30", "3,000",
    "1/2"), as do "a/b", hyphenated words ("well-known"), URLs and e-mail addresses;
  * "5 7/8" is one token with a no-break space (U+00A0) inside, as in Java;
  * characters the lexer does not know (emoji, anything outside the BMP) are deleted.

Differences from running the Java program, all deliberate or vanishingly rare:

  * pycocoevalcap joins all captions into one file, one per line, and splits Java's output
    at newlines. A caption that contains another line-break character (U+000B, U+000C,
    '\\r', U+2028, U+2029) makes Java print extra lines, which misaligns every later
    caption there; here each caption is tokenized on its own and those characters separate
    tokens like a space.
  * A few lookahead rules see the start of the next line: `tokenize` lexes each caption
    followed by the next one, as in pycocoevalcap's file, so equal inputs in equal order
    give equal tokens ("plan b." before "The ..." is "plan b ." as in Java).
  * Letters and digits are those of the jar's lexer tables (an older Unicode than
    Python's; measured by running the jar on every BMP character). Java lower-cases a
    capital sigma by its own word rules, approximated here (Greek only).

Checked against the jar on some 200,000 generated captions (mixing caption words,
contractions, abbreviations, numbers, punctuation, URLs and random Unicode): no
difference after coco-caption's punctuation removal.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["PUNCTUATIONS", "ptb_tokens", "tokenize", "tokenize_by_image"]

# Tokens pycocoevalcap removes after tokenization (its PUNCTUATIONS list).
PUNCTUATIONS = frozenset([
    "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
    "...", ";"])


# ------------------------------------------------------------------------------------------
# Character classes (contents of a [...] class, already escaped).


def _class_of(predicate) -> str:
  """A regex character-class body for the BMP code points where `predicate` holds."""
  ranges = []
  start = None
  for cp in range(0x10000):
    inside = 0xD800 > cp or cp > 0xDFFF
    inside = inside and predicate(chr(cp))
    if inside and start is None:
      start = cp
    elif not inside and start is not None:
      ranges.append((start, cp - 1))
      start = None
  if start is not None:
    ranges.append((start, 0xFFFF))
  parts = []
  for lo, hi in ranges:
    parts.append(re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}")
  return "".join(parts)


# Letters and digits as CoreNLP 3.4.1's lexer tables have them: Unicode categories L* and Nd
# of the BMP (JFlex 1.4 lexers see characters outside it as two surrogates, which no rule
# matches), less the characters that Unicode assigned after its tables were built and plus
# two Mongolian letters that later became marks (found by running the jar on every BMP
# character).
_NOT_YET_LETTERS = re.compile(
    "[\u037f\u0528-\u052f\u0560\u0588\u05ef\u0860-\u086a\u0870-\u0887\u0889-\u088e\u08a1"
    "\u08ad-\u08c9\u0978\u0980\u09fc\u0af9\u0c34\u0c5a\u0c5d\u0c80\u0cdd\u0d04\u0d54-\u0d56"
    "\u0d5f\u0e86\u0e89\u0e8c\u0e8e-\u0e93\u0e98\u0ea0\u0ea8-\u0ea9\u0eac\u13f5\u13f8-\u13fd"
    "\u16f1-\u16f8\u170d\u171f\u1878\u191d-\u191e\u19b0-\u19c0\u19c8-\u19c9\u1b4c\u1c80-\u1c88"
    "\u1c90-\u1cba\u1cbd-\u1cbf\u1cf2-\u1cf3\u1cfa\u2c2f\u2c5f\u312e-\u312f\u31bb-\u31bf"
    "\u4db6-\u4dbf\u9fcd-\u9fff\ua698-\ua69d\ua78f\ua794-\ua79f\ua7ab-\ua7ca\ua7d0-\ua7d1"
    "\ua7d3\ua7d5-\ua7d9\ua7f2-\ua7f7\ua8fd-\ua8fe\ua9e0-\ua9e4\ua9e6-\ua9ef\ua9fa-\ua9fe"
    "\uaa7e-\uaa7f\uab30-\uab5a\uab5c-\uab69\uab70-\uabbf]")
_NOT_YET_DIGITS = re.compile("[\u0de6-\u0def\ua9f0-\ua9f9]")
_L = _class_of(lambda c: (unicodedata.category(c) in ("Lu", "Ll", "Lt", "Lm", "Lo")
                          and not _NOT_YET_LETTERS.match(c)) or c in "\u1885\u1886")
_D = _class_of(lambda c: unicodedata.category(c) == "Nd" and not _NOT_YET_DIGITS.match(c))
_U = _class_of(lambda c: unicodedata.category(c) == "Lu" or c.isupper())
# Marks and odd letters PTBLexer also accepts inside a WORD.
_LX = (
    "\u00ad\u0237-\u024f\u02c2-\u02c5\u02d2-\u02df\u02e5-\u02ff\u0300-\u036f\u0370-\u037d"
    "\u0384\u0385\u03cf\u03f6\u03fc-\u03ff\u0483-\u0487\u04cf\u04f6-\u04ff\u0510-\u0525"
    "\u055a-\u055f\u0591-\u05bd\u05bf\u05c1\u05c2\u05c4\u05c5\u05c7\u0615-\u061a\u063b-\u063f"
    "\u064b-\u065e\u0670\u06d6-\u06ef\u06fa-\u06ff\u070f\u0711\u0730-\u074f\u0750-\u077f"
    "\u07a6-\u07b1\u07ca-\u07f5\u07fa\u0900-\u0903\u093c\u093e-\u094e\u0951-\u0955"
    "\u0962-\u0963\u0981-\u0983\u09bc-\u09c4\u09c7\u09c8\u09cb-\u09cd\u09d7\u09e2\u09e3"
    "\u0a01-\u0a03\u0a3c\u0a3e-\u0a4f\u0a81-\u0a83\u0abc-\u0acf\u0b82\u0bbe-\u0bc2"
    "\u0bc6-\u0bc8\u0bca-\u0bcd\u0c01-\u0c03\u0c3e-\u0c56\u0d3e-\u0d44\u0d46-\u0d48"
    "\u0e30-\u0e3a\u0e47-\u0e4e\u0eb1-\u0ebc\u0ec8-\u0ecd")
_SP = " \t\u00a0\u2000-\u200a\u3000"
# Line breaks other than '\n' (which pycocoevalcap turns into spaces): here spaces too.
_OTHER_NEWLINES = "\r\u2028\u2029\x0b\x0c"

# ------------------------------------------------------------------------------------------
# PTBLexer's macros, by their names there; written so that Python's greedy backtracking finds
# the longest match (or split into alternatives that are matched separately).

SPACE = f"[{_SP}]"
NEWLINE = "(?:\r\n|[\r\n\u2028\u2029\x0b\x0c\x85])"
SPACENL = f"(?:{SPACE}|{NEWLINE})"
_NAME = r"[A-Za-z][A-Za-z0-9_:.\-]*"
SGML = (rf"<(?:[!?][A-Za-z\-][^>\r\n]*|{_NAME}(?:[ ]+(?:{_NAME}[ ]*=[ ]*(?:'[^'\r\n]*'|"
        rf"\"[^\"\r\n]*\"|{_NAME})|{_NAME}))*[ ]*/?|/{_NAME})[ ]*>")
SENTEND = f"{SPACENL}(?:{SPACENL}|[{_U}]|{SGML})"
DIGIT = f"[{_D}]"
LETTER = f"[{_L}]"
LD = f"[{_L}{_D}]"
SPLET = "&[aeiouAEIOU](?i:acute|grave|uml);"
WL = f"(?:[{_L}{_LX}]|{SPLET})"
WLD = f"(?:[{_L}{_LX}{_D}]|{SPLET})"
WORD = f"{WL}{WLD}*(?:[.!?]{WL}{WLD}*)*"
NUM = f"{DIGIT}*(?:[.:,\u00ad\u066b\u066c]{DIGIT}+)+|{DIGIT}+"
NUMBER = f"[\\-+]?(?:{NUM})"
DATE = f"{DIGIT}{{1,2}}[\\-/]{DIGIT}{{1,2}}[\\-/]{DIGIT}{{2,4}}"
SUBSUPNUM = ("[\u207a\u207b\u208a\u208b]?"
             "(?:[\u2070\u00b9\u00b2\u00b3\u2074-\u2079]+|[\u2080-\u2089]+)")
FRAC = f"(?:{DIGIT}{{1,4}}[- \u00a0])?{DIGIT}{{1,4}}(?:\\\\?/|\u2044){DIGIT}{{1,4}}"
FRAC2 = "[\u00bc\u00bd\u00be\u2153-\u215e]"
DOLSIGN = r"[A-Z]*\$|#"
DOLSIGN2 = "[\u00a2\u00a3\u00a4\u00a5\u0080\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1\uffe5\uffe6]"
APOS = "(?:['\u0092\u2019]|(?i:&apos;))"
APOSETC = f"(?:{APOS}|[`\u0091\u2018\u201b])"
HYPHEN = "[-_\u058a\u2010\u2011]"
THING_PART = f"(?:[dDoOlL]{APOSETC}{LD})?{LD}+"
THING = f"{THING_PART}(?:{HYPHEN}{THING_PART})*"
SPAMP = "(?i:&amp;)"
THINGA = f"[A-Z]+(?:(?:[+&]|{SPAMP})[A-Z]+)+"
THING3 = r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"
# Longer alternatives first wherever one can be a prefix of another's match.
ACRO_SPECIAL = r"(?i:u\.s\.-(?:u\.s\.s\.r|u\.k)|(?:canada|sino|korean|eu|japan|non)-u\.s)"
ACRO = ACRO_SPECIAL + r"|[A-Za-z](?:\.[A-Za-z])*"
ACRO2 = ACRO_SPECIAL + r"|[A-Za-z](?:\.[A-Za-z])+"
HTHING = f"[A-Za-z0-9][A-Za-z0-9.,\u00ad]*(?:-(?:(?:{ACRO2})\\.|[A-Za-z0-9\u00ad]+))+"
REDAUX = f"{APOS}(?:(?i:re|ve|ll)|[msdMSD])"
SWORD = "[A-Za-z\u00ad]*[A-MO-Za-mo-z]\u00ad*"
SREDAUX = f"(?i:n){APOSETC}(?i:t)"
APOWORD = [
    f"{APOS}(?i:n){APOS}?", f"[lLdDjJ]{APOS}", f"(?i:dunkin){APOS}", f"(?i:somethin){APOS}",
    f"(?i:ol){APOS}", f"{APOS}(?i:em)", f"[A-HJ-XZn]{APOSETC}{LETTER}{{2}}{LETTER}*",
    f"{APOS}[2-9]0(?i:s)", f"{APOS}(?i:till?)",
    f"{LETTER}+[aeiouyAEIOUY]{APOSETC}[aeiouA-Z]{LETTER}*", f"{APOS}(?i:cause)",
    r"(?i:cont'd)\.?", "(?i:nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l)"]
FULLURL = r"(?i:https?)://[^ \t\n\f\r\"<>|(){}]+[^ \t\n\f\r\"<>|.!?(){},-]"
LIKELYURL = (r"(?:(?i:www)\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4}|"
             r"(?:[^ \t\n\f\r\"`'<>|.!?(){},-_$]+\.)+(?i:com|net|org|edu))"
             r"(?:/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?")
EMAIL = (r"(?:<|(?i:&lt;))?[a-zA-Z0-9][^ \t\n\f\r\"<>|(){}\u00a0]*@"
         r"(?:[^ \t\n\f\r\"<>|(){}.\u00a0]+\.)*[^ \t\n\f\r\"<>|(){}.\u00a0]+"
         r"(?:>|(?i:&gt;))?")
TWITTER = f"@[a-zA-Z_][a-zA-Z_0-9]*|#{WL}+"
ABMONTH = "jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec"
ABDAYS = "mon|tue|tues|wed|thu|thurs|fri"
ABSTATE = ("(?i:ala|ariz)|A(?i:z)|A(?i:rk)|(?i:calif|colo|conn|ct|dak)|D(?i:el)|"
           "(?i:fla|ga)|I(?i:ll)|(?i:ind|kans?|ky)|L(?i:a)|M(?i:ass)|(?i:md|mich|minn)|"
           "M(?i:iss)|(?i:mo|mont|neb|nev|okla)|O(?i:re)|P(?i:a)|(?i:penn|tenn)|T(?i:ex)|"
           "(?i:va|vt)|W(?i:ash)|(?i:wisc?|wyo)")
ABCOMP = "inc|cos?|corp|pp?t[ye]s?|ltd|plc|rt|bancorp|bhd|assn|univ|intl|sys"
ABNUM = "tel|est|ext|sq"
ABPTIT = r"jr|sr|bros|(?:ed|ph)\.d|blvd|rd|esq"
ABBREV1 = (f"(?:(?i:{ABMONTH}|{ABDAYS}|{ABCOMP}|{ABNUM}|{ABPTIT}|etc|al|seq|bldg)|"
           f"{ABSTATE})\\.")
ABTITLE = ("(?i:mr|mrs|ms)|M(?i:iss)|(?i:drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|"
           "govs?|adm|rev|maj|sgt|cpl|pvt|capt|ste?|ave|pres|lieut|rt|hon|brig|co?mdr|pfc|spc|"
           "supts?|det|mt|ft|adj|adv|asst|assoc|ens|insp|mlle|mme|msgr|sfc|sr)")
ABCOMP2 = "invt|elec|natl|m[ft]g|dept"
ABBREV4 = [ACRO, ABTITLE, f"(?i:vs|alex|wm|jos|cie|a\\.k\\.a|cf|treas|ph|{ABCOMP2})"]
ABBREV3 = r"(?i:ca|figs?|prop|nos?|art|bldg|pp|op)\."
ACRONYM_NEXT = ("A(?i:bout|ccording|dditionally|fter|n|s|t)?|B(?i:ut)|E(?i:arlier)|"
                "H(?i:e|er|ere|owever)|I(?i:f|n|t)|L(?i:ast)|M(?i:any|ore|r\\.|s\\.)|"
                "N(?i:ow)|O(?i:nce|ne|ther|ur)|S(?i:he|ince|o|ome|uch)|"
                "T(?i:hat|he|heir|hen|here|hese|hey|his)|W(?i:e|hen|hile|hat)|Y(?i:et|ou)|" + SGML)
PHONE = (r"(?:\([0-9]{2,3}\)[ \u00a0]?|(?:\+\+?)?(?:[0-9]{2,4}[\- \u00a0])?[0-9]{2,4}"
         r"[\- \u00a0])[0-9]{3,4}[\- \u00a0]?[0-9]{3,5}|"
         r"(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}")
FILENAME = (f"{WLD}+(?:\\.{WLD}+)*" r"\.(?i:bat|bmp|c|class|cgi|cpp|dll|docx|doc|exe|gif|gz|h|"
            r"html|htm|jar|java|jpeg|jpg|mov|mp3|pdf|php|pl|png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip)")
DBLQUOT = '"|(?i:&quot;)'
QUOTES = ("''|(?i:&apos;)|[`\u2018\u2019\u201a\u201b\u201c\u201d\u0091\u0092\u0093\u0094\u201e"
          "\u201f\u2039\u203a\u00ab\u00bb]{1,2}|['\u0092\u2019]")
SMILEY = r"[<>]?[:;=][\-o\*']?[\(\)DPdpO\\{@\|\[\]]"
ASIANSMILEY = (r"[\^x=~<>]\.\[\^x=~<>\]|[\-\^x=~<>']_[\-\^x=~<>']|"
               r"\([\-\^x=~<>'][_.]?[\-\^x=~<>']\)")
LDOTS = "\\.{3,5}|(?:\\.[ \u00a0]){2,4}\\.|[\u0085\u2026]"
TBSPEC = (f"-(?i:rrb|lrb|rcb|lcb|rsb|lsb)-|(?i:c\\.d\\.s|pro-|anti-)|"
          f"(?i:s)(?:&|{SPAMP})(?i:p-500|ls)|(?i:cap){APOS}(?i:n)|(?i:c){APOS}(?i:est)")
TBSPEC2 = f"{APOS}[0-9][0-9]"
INSENTP = "[,;:\u3001]"
MISCSYMBOL = (
    "[+%&~\\^|\\\\\u00a6\u00a7\u00a8\u00a9\u00ac\u00ae\u00af\u00b0-\u00b3\u00b4-\u00ba\u00d7"
    "\u00f7\u0387\u05be\u05c0\u05c3\u05c6\u05f3\u05f4\u0600-\u0603\u0606-\u060a\u060c\u0614"
    "\u061b\u061e\u066a\u066d\u0703-\u070d\u07f6\u07f7\u07f8\u0964\u0965\u0e4f\u1fbd\u2016"
    "\u2017\u2020-\u2023\u2030-\u2038\u203b\u203e-\u2042\u2044\u207a-\u207f\u208a-\u208e"
    "\u2100-\u214f\u2190-\u21ff\u2200-\u2bff\u3012\u30fb\uff01-\uff0f\uff1a-\uff20"
    "\uff3b-\uff40\uff5b-\uff65]")

# ------------------------------------------------------------------------------------------
# Token actions: each gets the matched text and returns (token or None, characters consumed).


def _latex_quotes(tok: str, probably_left: bool) -> str:
  if probably_left:
    tok = re.sub("&apos;|'", "`", tok)
    tok = re.sub('"|&quot;', "``", tok)
  else:
    tok = re.sub("&apos;|'", "'", tok)
    tok = re.sub('"|&quot;', "''", tok)
  tok = re.sub("[\u0091\u2018\u201b\u2039]", "`", tok)
  tok = re.sub("[\u0092\u2019\u203a]", "'", tok)
  tok = re.sub("[\u0093\u201c\u00ab]", "``", tok)
  return re.sub("[\u0094\u201d\u00bb]", "''", tok)


def _keep(t):
  return t, len(t)


def _soft(t):
  return t.replace("\u00ad", "") or "-", len(t)


def _pushback(n: int):
  return lambda t: (t[:-n], len(t) - n)


def _const(out: str):
  return lambda t: (out, len(t))


def _skip(t):
  return None, len(t)


def _quote_left(t):
  return _latex_quotes(t, True), len(t)


def _quote_right(t):
  return _latex_quotes(t, False), len(t)


def _nbsp(t):
  return t.replace(" ", "\u00a0"), len(t)


def _parens(t):
  return t.replace("(", "-LRB-").replace(")", "-RRB-"), len(t)


def _phone(t):
  return t.replace(" ", "\u00a0").replace("(", "-LRB-").replace(")", "-RRB-"), len(t)


def _amp(t):
  return re.sub("(?i:&amp;)", "&", t), len(t)


def _currency(t):
  return {"\u00a2": "cents", "\u00a3": "#", "\u0080": "$", "\u00a4": "$", "\u20a0": "$",
          "\u20ac": "$"}.get(t, t), len(t)


def _fraction2(t):
  return {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3",
          "\u2154": "2/3"}.get(t, t), len(t)


def _hyphens(t):
  return ("--" if 3 <= len(t) <= 4 else t), len(t)


def _acronym(t):
  """An acronym that ends a sentence: "I." -> "I" and a period; "U.S." -> "U.S." and a period."""
  if len(t) == 2:
    return t[:1], 1
  return t, len(t) - 1


def _period_after(t):
  """An abbreviation that ends a sentence: keep its period and return one more."""
  return t, len(t) - 1


# (patterns, trailing context or None, action), in PTBLexer's rule order. Each pattern of a
# rule is matched on its own and the longest wins, so alternatives need no careful order.
_RULE_SPECS = [
    (["(?i:c\\+\\+|[cf]#)"], None, _keep),
    (["(?i:cannot|'twas)"], None, _pushback(3)),
    (["(?i:'tis|gonna|gotta|lemme|gimme|wanna)"], None, _pushback(2)),
    ([SGML], None, _nbsp),
    (["(?i:&(?:md|mdash|ndash);)|[\u0096\u0097\u2013\u2014\u2015]"], None, _const("--")),
    ([SPAMP], None, _amp),
    (["(?i:&(?:ht|tl|ur|lr|qc|ql|qr|odq|cdq|#[0-9]+);)"], None, _keep),
    ([WORD], REDAUX, _soft),
    ([SWORD], SREDAUX, _soft),
    ([WORD], None, _soft),
    (APOWORD, None, _keep),
    (["(?i:y)" + APOS], LETTER, _keep),
    ([FULLURL, LIKELYURL], None, _keep),
    ([EMAIL], None, _keep),
    ([TWITTER], None, _keep),
    ([REDAUX, SREDAUX], "[^A-Za-z]", _quote_right),
    ([DATE], None, _keep),
    ([NUMBER], None, _soft),
    ([SUBSUPNUM], None, _keep),
    ([FRAC], None, _nbsp),
    ([FRAC2], None, _fraction2),
    ([TBSPEC], None, _amp),
    ([THING3], None, _keep),
    ([DOLSIGN], None, _keep),
    ([DOLSIGN2], None, _currency),
    ([f"(?:{ACRO})\\."], f"{SPACENL}+(?:{ACRONYM_NEXT}){SPACENL}", _acronym),
    ([ABBREV3], f"{SPACENL}?{DIGIT}", _keep),
    (["(?:(?i:pt)[eyEY]|(?i:co))\\."], f"{SPACE}(?i:ltd|lim)", _keep),
    ([ABBREV1], SENTEND, _period_after),
    ([ABBREV1], "[\\s\\S]{2}", _keep),
    ([ABBREV1], None, _period_after),
    ([f"(?:{a})\\." for a in ABBREV4], None, _keep),
    (ABBREV4, SPACE, _keep),
    ([ACRO], SPACENL, _keep),
    ([TBSPEC2], SPACENL, _keep),
    ([FILENAME], f"{SPACENL}|[.?!,]", _keep),
    ([f"{WORD}\\."], INSENTP, _soft),
    ([PHONE], None, _phone),
    ([DBLQUOT], "[A-Za-z0-9$]", _quote_left),
    ([DBLQUOT], None, _quote_right),
    (["\x7f"], None, _skip),
    (["<|(?i:&lt;)"], None, _const("<")),
    ([">|(?i:&gt;)"], None, _const(">")),
    ([SMILEY], "[^A-Za-z0-9]", _parens),
    ([ASIANSMILEY], None, _parens),
    (["\\{"], None, _const("-LCB-")),
    (["\\}"], None, _const("-RCB-")),
    (["\\["], None, _const("-LSB-")),
    (["\\]"], None, _const("-RSB-")),
    (["\\("], None, _const("-LRB-")),
    (["\\)"], None, _const("-RRB-")),
    (["-+"], None, _hyphens),
    ([LDOTS], None, _const("...")),
    (["@+|#+|_+"], None, _keep),
    (["\\*+|(?:\\\\\\*){1,3}"], None, _keep),
    ([INSENTP], None, _keep),
    (["[?!]+"], None, _keep),
    (["[.\u00a1\u00bf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa\u3002]"], None, _keep),
    (["="], None, _keep),
    (["/"], None, _keep),
    ([f"{HTHING}\\."], INSENTP, _soft),
    ([HTHING], None, _soft),
    ([f"{THING}\\."], INSENTP, _keep),
    ([THING], None, _keep),
    ([f"{THINGA}\\."], INSENTP, _amp),
    ([THINGA], None, _amp),
    (["'"], "[A-Za-z][^ \t\n\r\u00a0]", _quote_left),
    ([REDAUX], None, _quote_right),
    ([SREDAUX], None, _quote_right),
    ([QUOTES], None, _quote_right),
    (["<<|>>"], None, _keep),
    ([MISCSYMBOL], None, _keep),
    ([f"\x00|{SPACE}+|[\u200b\u200e\u200f\ufeff]|(?i:&nbsp;)"], None, _skip),
    ([NEWLINE], None, _skip),
]


def _combine(specs) -> tuple[re.Pattern, list]:
  """One regex trying every rule's patterns at a position, each in its own lookahead.

  A pattern that matches fills its group (and its context's); one that does not leaves
  them empty. Returns the regex and, per pattern, (token group, context group or None,
  action), in rule order.
  """
  parts = []
  entries = []
  for patterns, context, action in specs:
    for pattern in patterns:
      k = len(entries)
      if context is None:
        parts.append(f"(?:(?=(?P<t{k}>{pattern}))|)")
      else:
        parts.append(f"(?:(?=(?P<t{k}>{pattern})(?=(?P<c{k}>{context})))|)")
      entries.append((k, context is not None, action))
  regex = re.compile("".join(parts))
  index = regex.groupindex
  return regex, [(index[f"t{k}"], index[f"c{k}"] if has_context else None, action)
                 for k, has_context, action in entries]


@functools.cache
def _rules() -> tuple[re.Pattern, list]:
  return _combine(_RULE_SPECS)  # Compiled on first use: ~0.1 s.

# Words the rules treat specially even when a space follows; every other run of ASCII
# letters followed by a space or a line end is one token.
_SPECIAL_WORDS = frozenset(["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"])
_ASCII_WORD = re.compile("[A-Za-z]+")
# Words whose "word." some rule may lex as other than "word" and "." (abbreviations,
# acronyms, single letters).
_ABBREVIATION = re.compile("|".join(
    [f"(?:{ABBREV1})", ABBREV3, "(?:(?i:pt)[eyEY]|(?i:co))\\."]
    + [f"(?:{a})\\." for a in ABBREV4]))


def _lex(text: str, limit: int) -> list[str]:
  """PTBLexer's tokens in `text[:limit]` (one line), before lower-casing.

  `text[limit:]` is what follows the line in the file: lookahead rules may see it.
  """
  rules, entries = _rules()
  tokens = []
  pos = 0
  end = len(text)
  while pos < limit:
    ch = text[pos]
    if ch == " " or ch == "\t":
      pos += 1
      continue
    m = _ASCII_WORD.match(text, pos)
    if m is not None:
      # Fast paths for the common shapes "word", "word," and "word." before a space or
      # a line end, which no rule but the plain word's can lex otherwise.
      word = m.group()
      stop = m.end()
      after = text[stop] if stop < end else "\n"
      if after in " \t\n":
        if len(word) > 6 or word.lower() not in _SPECIAL_WORDS:
          tokens.append(word)
          pos = stop
          continue
      elif after in ",;:." and len(word) > 1 and word.lower() not in _SPECIAL_WORDS:
        next_ = text[stop + 1] if stop + 1 < end else "\n"
        if next_ in " \t\n" and (after != "." or (
            next_ == "\n" or text[stop + 2:stop + 3] != "."
        ) and _ABBREVIATION.fullmatch(text, pos, stop + 1) is None):
          tokens.append(word)
          tokens.append(after)
          pos = stop + 1
          continue
    regs = rules.match(text, pos).regs
    best_total = 0
    best = None
    for token_group, context_group, action in entries:
      stop = regs[token_group][1]
      if stop < 0:
        continue
      total = regs[context_group][1] if context_group else stop
      if total > best_total:
        best_total = total
        best = (stop, action)
    if best is None:  # Untokenizable: PTBLexer deletes it.
      pos += 1
      continue
    token, consumed = best[1](text[pos:best[0]])
    if token is not None:
      tokens.append(token)
    pos += consumed
  return tokens


def _to_utf16_units(text: str) -> str:
  """Splits characters outside the BMP into surrogate pairs, as Java strings hold them."""
  out = []
  for ch in text:
    cp = ord(ch)
    if cp < 0x10000:
      out.append(ch)
    else:
      cp -= 0x10000
      out.append(chr(0xD800 + (cp >> 10)) + chr(0xDC00 + (cp & 0x3FF)))
  return "".join(out)


def _from_utf16_units(token: str) -> str:
  return token.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


_WIDE = re.compile("[\U00010000-\U0010ffff]")


def _prepare(caption: str) -> tuple[str, bool]:
  if not isinstance(caption, str):
    raise TypeError(f"caption must be a string, got {type(caption).__name__}: {caption!r}")
  text = caption.replace("\n", " ")
  for ch in _OTHER_NEWLINES:
    if ch in text:
      text = text.replace(ch, " ")
  wide = not text.isascii() and _WIDE.search(text) is not None
  return (_to_utf16_units(text) if wide else text), wide


def _line_tokens(line: str, wide: bool, following: str | None) -> list[str]:
  buffer = line if following is None else f"{line}\n{following}"
  tokens = _lex(buffer, len(line))
  if wide:
    tokens = [_from_utf16_units(t) for t in tokens]
  return [_lower(t) for t in tokens]


def _joins_word(token: str, j: int) -> bool:
  """Whether token[j] continues a word, roughly as Java's word BreakIterator sees it."""
  c = token[j]
  if c.isalnum() or c == "_":
    cp = ord(c)
    return not (0x3040 <= cp <= 0x30FF or 0x3400 <= cp <= 0x4DBF or 0x4E00 <= cp <= 0x9FFF
                or 0xAC00 <= cp <= 0xD7AF or 0xF900 <= cp <= 0xFAFF)
  between = 0 < j < len(token) - 1
  if c == "-":
    return between and token[j - 1].isalpha() and token[j + 1].isalpha()
  return c in ".'" and between and token[j - 1].isalnum() and token[j + 1].isalnum()


_CASED = ("Lu", "Ll", "Lt")


def _lower(token: str) -> str:
  """Java's String.toLowerCase: str.lower, except that a capital sigma becomes a final sigma
  when a cased letter precedes it and none follows it within its word."""
  lower = token.lower()
  if "\u03a3" not in token or len(lower) != len(token):
    return lower
  chars = list(lower)
  for i, ch in enumerate(token):
    if ch != "\u03a3":
      continue
    before = after = False
    j = i - 1
    while j >= 0 and not before:
      before = unicodedata.category(token[j]) in _CASED
      if not before and not _joins_word(token, j):
        break
      j -= 1
    j = i + 1
    while j < len(token) and not after:
      after = unicodedata.category(token[j]) in _CASED
      if not after and not _joins_word(token, j):
        break
      j += 1
    chars[i] = "\u03c2" if before and not after else "\u03c3"
  return "".join(chars)


def ptb_tokens(caption: str, next_caption: str | None = None) -> list[str]:
  """Stanford PTBTokenizer's lower-cased tokens for one caption, punctuation kept.

  As pycocoevalcap writes captions one per line into one file, a few lookahead rules
  see the start of the next line; `next_caption` is that caption (None: end of file).
  """
  line, wide = _prepare(caption)
  following = None if next_caption is None else _prepare(next_caption)[0]
  return _line_tokens(line, wide, following)


def _drop_punctuation(tokens: list[str]) -> str:
  line = " ".join(tokens).rstrip()
  return " ".join(w for w in line.split(" ") if w not in PUNCTUATIONS)


def tokenize(captions: Sequence[str]) -> list[str]:
  """coco-caption's tokenization of each caption: space-joined tokens, punctuation dropped.

  Equals pycocoevalcap's `PTBTokenizer().tokenize` on the same captions in the same order
  (each caption is lexed as a line of one file, followed by the next caption).
  """
  lines = [_prepare(caption) for caption in captions]
  out = []
  for i, (line, wide) in enumerate(lines):
    following = lines[i + 1][0] if i + 1 < len(lines) else None
    out.append(_drop_punctuation(_line_tokens(line, wide, following)))
  return out


def tokenize_by_image(captions_for_image: Mapping[Any, Sequence[Any]]) -> dict[Any, list[str]]:
  """The dict form pycocoevalcap uses: `{image_id: [caption, ...]}` -> same keys, tokenized.

  A caption may be a string or a dict with a "caption" key (pycocoevalcap's own input).
  """
  ids = []
  texts = []
  for image_id, captions in captions_for_image.items():
    for caption in captions:
      ids.append(image_id)
      texts.append(caption["caption"] if isinstance(caption, Mapping) else caption)
  out = {image_id: [] for image_id in captions_for_image}
  for image_id, tokens in zip(ids, tokenize(texts), strict=True):
    out[image_id].append(tokens)
  return out
