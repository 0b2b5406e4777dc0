"""Parsers for the published MRMC outputs in tests/fixtures/mrmc (test helper, not a test).

Each parser returns ``[(key, printed_text)]``: every number the program printed, keyed by what
it is, so the tests can compare each one to the library at the precision it was printed.
Keys are tuples; treatment and reader numbers are 0-based positions in file order.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mrmc"
NUM = r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?"


def tolerance(printed: str, rel: float = 1e-6) -> float:
    """Half a unit of the last printed digit, but at least ``rel`` relative."""
    value = float(printed)
    mantissa = printed.lower().split("e")[0]
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    exp = int(printed.lower().split("e")[1]) if "e" in printed.lower() else 0
    half_unit = 0.5 * 10 ** (exp - decimals)
    return max(half_unit * (1 + 1e-9), rel * abs(value))


def close(actual: float, printed: str, rel: float = 1e-6) -> bool:
    """True when ``actual`` rounds to the printed value (or is within ``rel``)."""
    return math.isfinite(actual) and abs(actual - float(printed)) <= tolerance(printed, rel)


def _between(text: str, start: str, end: str | None) -> str:
    i = text.index(start)
    j = text.index(end, i) if end else len(text)
    return text[i:j]


def parse_iowa_or(text: str) -> list[tuple[tuple, str]]:
    """Every number of an OR-DBM MRMC 2.51 OR-analysis output."""
    out: list[tuple[tuple, str]] = []
    est = _between(text, "TREATMENT x READER AUC ESTIMATES", "TREATMENT AUC MEANS")
    for m in re.finditer(rf"^\s+(\d+)((?:[ \t]+{NUM})+)[ \t]*$", est, re.M):
        for t, v in enumerate(m.group(2).split()):
            out.append((("auc", int(m.group(1)) - 1, t), v))
    means = _between(text, "TREATMENT AUC MEANS", "TREATMENT AUC MEAN DIFFERENCES")
    for m in re.finditer(rf"^\s+(\d+)\s+({NUM})\s*$", means, re.M):
        out.append((("mean", int(m.group(1)) - 1), m.group(2)))
    diffs = _between(text, "TREATMENT AUC MEAN DIFFERENCES", "ANOVA Tables")
    for m in re.finditer(rf"^\s+(\d+) - (\d+)\s+({NUM})\s*$", diffs, re.M):
        out.append((("mean_diff", int(m.group(1)) - 1, int(m.group(2)) - 1), m.group(3)))
    anova = _between(text, "TREATMENT X READER ANOVA of AUCs", "READER ANOVAs of AUCs")
    for m in re.finditer(rf"^\s+(T|R|T\*R)\s+({NUM})\s+(\d+)\s+({NUM})\s*$", anova, re.M):
        src = m.group(1).replace("*", "")
        out += [(("ss", src), m.group(2)), (("df", src), m.group(3)), (("ms", src), m.group(4))]
    rd = _between(text, "READER ANOVAs of AUCs", "Variance component and error-covariance")
    m = re.search(rf"^\s+R\s+\d+((?:[ \t]+{NUM})+)[ \t]*$", rd, re.M)
    for t, v in enumerate(m.group(1).split()):
        out.append((("ms_r_trt", t), v))
    orc = _between(text, "Obuchowski-Rockette variance component", "Corresponding DBM")
    names = {"Var(R)": "var_r", "Var(T*R)": "var_tr", "COV1": "cov1", "COV2": "cov2",
             "COV3": "cov3", "Var(Error)": "var_error"}
    for m in re.finditer(rf"^ (\S+)\s+({NUM})(?:\s+({NUM}))?\s*$", orc, re.M):
        if m.group(1) in names:
            out.append((("or", names[m.group(1)]), m.group(2)))
            if m.group(3):
                out.append((("rho", names[m.group(1)]), m.group(3)))
    dbm = _between(text, "Corresponding DBM", "Analysis 1 (OR Analysis)")
    dnames = {"Var(R)": "var_r", "Var(C)": "var_c", "Var(T*R)": "var_tr", "Var(T*C)": "var_tc",
              "Var(R*C)": "var_rc", "Var(T*R*C) + Var(Error)": "var_trc_error"}
    for m in re.finditer(rf"^ (Var\(.*?\)(?: \+ Var\(Error\))?)\s+({NUM})\s*$", dbm, re.M):
        out.append((("dbm", dnames[m.group(1)]), m.group(2)))

    a1 = _between(text, "Analysis 1 (OR Analysis)", "Analysis 2 (OR Analysis)")
    m = re.search(rf"^ Treatment\s+(\d+)\s+({NUM})\s+({NUM})\s+({NUM})\s*$", a1, re.M)
    out += [(("rrrc", "ndf"), m.group(1)), (("rrrc", "ms_t"), m.group(2)), (("rrrc", "F"), m.group(3)),
            (("rrrc", "p"), m.group(4))]
    m = re.search(rf"^ Error term\s+({NUM})\s+({NUM})\s*$", a1, re.M)
    out += [(("rrrc", "ddf"), m.group(1)), (("rrrc", "error_term"), m.group(2))]
    out += _diff_rows(a1, "rrrc", ("estimate", "se", "df", "statistic", "p_value", "ci_low", "ci_high"))
    for m in re.finditer(rf"^\s+(\d+)\s+({NUM})\s+({NUM})\s+({NUM})\s+\(({NUM})\s*,\s*({NUM})\)\s+({NUM})\s*$", a1, re.M):
        t = int(m.group(1)) - 1
        for f, v in zip(("estimate", "se", "df", "ci_low", "ci_high", "cov2"), m.groups()[1:]):
            out.append((("rrrc_single", t, f), v))

    a2 = _between(text, "Analysis 2 (OR Analysis)", "Analysis 3 (OR Analysis)")
    a2ab = _between(a2, "X2 value", "c) Single treatment")
    m = re.search(rf"^\s+({NUM})\s+(\d+)\s+({NUM})\s*$", a2ab, re.M)
    out += [(("frrc", "X2"), m.group(1)), (("frrc", "ndf"), m.group(2)), (("frrc", "p"), m.group(3))]
    out += _diff_rows(a2ab, "frrc", ("estimate", "se", "statistic", "p_value", "ci_low", "ci_high"))
    a2c = _between(a2, "c) Single treatment", "d) Single-reader")
    for m in re.finditer(rf"^\s+(\d+)\s+({NUM})\s+({NUM})\s+\(({NUM})\s*,\s*({NUM})\)\s*$", a2c, re.M):
        t = int(m.group(1)) - 1
        for f, v in zip(("estimate", "se", "ci_low", "ci_high"), m.groups()[1:]):
            out.append((("frrc_single", t, f), v))
    for m in re.finditer(rf"^\s+(\d+)\s+({NUM})\s+({NUM})\s*$", _between(a2c, "Var(Error)", None), re.M):
        t = int(m.group(1)) - 1
        out += [(("var_trt", t), m.group(2)), (("cov2_trt", t), m.group(3))]
    a2d = _between(a2, "d) Single-reader", None)
    for m in re.finditer(rf"^\s+(\d+)\s+(\d+) - (\d+)\s+({NUM})\s+({NUM})\s+({NUM})\s+({NUM})\s+\(\s*({NUM})\s*,\s*({NUM})\)\s*$", a2d, re.M):
        r, a, b = int(m.group(1)) - 1, int(m.group(2)) - 1, int(m.group(3)) - 1
        for f, v in zip(("estimate", "se", "statistic", "p_value", "ci_low", "ci_high"), m.groups()[3:]):
            out.append((("frrc_reader", r, a, b, f), v))
    for m in re.finditer(rf"^\s+(\d+)\s+({NUM})\s+({NUM})\s*$", _between(a2d, "Var(Error)", None), re.M):
        r = int(m.group(1)) - 1
        out += [(("var_reader", r), m.group(2)), (("cov1_reader", r), m.group(3))]

    a3 = _between(text, "Analysis 3 (OR Analysis)", "REFERENCES") if "REFERENCES" in text else \
        _between(text, "Analysis 3 (OR Analysis)", None)
    m = re.search(rf"^ Treatment\s+(\d+)\s+({NUM})\s+({NUM})\s+({NUM})\s*$", a3, re.M)
    out += [(("rrfc", "ms_t"), m.group(2)), (("rrfc", "F"), m.group(3)), (("rrfc", "p"), m.group(4))]
    m = re.search(rf"^ T\*R\s+(\d+)\s+({NUM})\s*$", a3, re.M)
    out += [(("rrfc", "ddf"), m.group(1)), (("rrfc", "error_term"), m.group(2))]
    out += _diff_rows(a3, "rrfc", ("estimate", "se", "df", "statistic", "p_value", "ci_low", "ci_high"))
    for m in re.finditer(rf"^\s+(\d+)\s+({NUM})\s+({NUM})\s+({NUM})\s+(\d+)\s+\(({NUM})\s*,\s*({NUM})\)\s*$", a3, re.M):
        t = int(m.group(1)) - 1
        for f, v in zip(("estimate", "ms_r", "se", "df", "ci_low", "ci_high"), m.groups()[1:]):
            out.append((("rrfc_single", t, f), v))
    return out


def _diff_rows(text: str, name: str, fields: tuple[str, ...]) -> list[tuple[tuple, str]]:
    nums = r"\s+".join([f"({NUM})"] * (len(fields) - 2))
    pat = rf"^\s+(\d+) - (\d+)\s+{nums}\s+\(\s*({NUM})\s*,\s*({NUM})\)\s*$"
    out = []
    for m in re.finditer(pat, text, re.M):
        a, b = int(m.group(1)) - 1, int(m.group(2)) - 1
        for f, v in zip(fields, m.groups()[2:]):
            out.append(((f"{name}_diff", a, b, f), v))
    return out


def parse_jafroc_dbm(text: str) -> list[tuple[tuple, str]]:
    """Every number of the JAFROC 4.2.1 DBM output (treatments and readers labelled 0..)."""
    out: list[tuple[tuple, str]] = []
    est = _between(text, "READER      0", "TREATMENT MEANS")
    for m in re.finditer(rf"^(\d+)\s+({NUM})\s+({NUM})\s*$", est, re.M):
        out += [(("auc", int(m.group(1)), 0), m.group(2)), (("auc", int(m.group(1)), 1), m.group(3))]
    means = _between(text, "TREATMENT MEANS", "TREATMENT MEAN DIFFERENCES")
    for m in re.finditer(rf"^(\d+)\s+({NUM})\s*$", means, re.M):
        out.append((("mean", int(m.group(1))), m.group(2)))
    anova = _between(text, "TREATMENT X READER X CASE ANOVA", "READER X CASE ANOVAs")
    for m in re.finditer(rf"^\s+(T|R|C|TR|TC|RC|TRC)\s+({NUM})\s+(\d+)\s+({NUM})\s*$", anova, re.M):
        out += [(("ss", m.group(1)), m.group(2)), (("df", m.group(1)), m.group(3)), (("ms", m.group(1)), m.group(4))]
    per_trt = _between(text, "READER X CASE ANOVAs", "Variance components estimates")
    for m in re.finditer(rf"^\s+(R|C|RC)\s+(\d+)\s+({NUM})\s+({NUM})\s*$", per_trt, re.M):
        out += [(("ms_trt", 0, m.group(1)), m.group(3)), (("ms_trt", 1, m.group(1)), m.group(4))]
    comps = _between(text, "DBM Variance Component Estimates", "Obuchowski-Rockette variance")
    dnames = {"Var(R)": "var_r", "Var(C)": "var_c", "Var(T*R)": "var_tr", "Var(T*C)": "var_tc",
              "Var(R*C)": "var_rc", "Var(T*R*C) + Var(Error)": "var_trc_error"}
    for m in re.finditer(rf"^ (Var\(.*?\)(?: \+ Var\(Error\))?)\s+({NUM})\s*$", comps, re.M):
        out.append((("dbm", dnames[m.group(1)]), m.group(2)))
    orc = _between(text, "Obuchowski-Rockette variance", "Analysis 1:")
    onames = {"Reader": "var_r", "Treatment*Reader": "var_tr", "COV1": "cov1", "COV2": "cov2",
              "COV3": "cov3", "ERROR": "var_error"}
    for m in re.finditer(rf"^ (\S+)\s+({NUM})\s*$", orc, re.M):
        if m.group(1) in onames:
            out.append((("or", onames[m.group(1)]), m.group(2)))
    parts = {"rrrc": _between(text, "Analysis 1:", "Analysis 2:"),
             "frrc": _between(text, "Analysis 2:", "Analysis 3:"),
             "rrfc": _between(text, "Analysis 3:", "REFERENCES")}
    for name, part in parts.items():
        m = re.search(rf"^ Treatment\s+(\d+)\s+({NUM})\s+({NUM})\s+({NUM})\s*$", part, re.M)
        out += [((name, "ms_t"), m.group(2)), ((name, "F"), m.group(3)), ((name, "p"), m.group(4))]
        m = re.search(rf"^ Error\s+({NUM})\s+({NUM})\s*$", part, re.M)
        out += [((name, "ddf"), m.group(1)), ((name, "error_term"), m.group(2))]
        for m in re.finditer(rf"^(\d+)\s+- (\d+)\s+({NUM})\s+({NUM})\s+({NUM})\s+({NUM})\s+({NUM})\s+({NUM})\s*,\s*({NUM})\s*$", part, re.M):
            a, b = int(m.group(1)), int(m.group(2))
            for f, v in zip(("estimate", "se", "df", "statistic", "p_value", "ci_low", "ci_high"), m.groups()[2:]):
                out.append(((f"{name}_diff", a, b, f), v))
        for m in re.finditer(rf"^\s+(\d+)\s+({NUM})\s+({NUM})\s+({NUM})\s+\(({NUM})\s*,\s*({NUM})\)\s*$", part, re.M):
            t = int(m.group(1))
            for f, v in zip(("estimate", "se", "df", "ci_low", "ci_high"), m.groups()[1:]):
                out.append(((f"{name}_single", t, f), v))
    frrc = parts["frrc"]
    ss = _between(frrc, "Sum of Squares", "Mean Squares")
    ms = _between(frrc, "Mean Squares", "d) Treatment-by-case")
    for kind, block in (("ss_reader", ss), ("ms_reader", ms)):
        for m in re.finditer(rf"^\s+(T|C|TC)\s+\d+((?:[ \t]+{NUM})+)[ \t]*$", block, re.M):
            for r, v in enumerate(m.group(2).split()):
                out.append(((kind, r, m.group(1)), v))
    for m in re.finditer(rf"^(\d+)\s+(\d+)\s+-(\d+)\s+({NUM})\s+({NUM})\s+({NUM})\s+({NUM})\s+({NUM})\s+({NUM})\s*,\s*({NUM})\s*$", frrc, re.M):
        r, a, b = int(m.group(1)), int(m.group(2)), int(m.group(3))
        for f, v in zip(("estimate", "se", "df", "statistic", "p_value", "ci_low", "ci_high"), m.groups()[3:]):
            out.append((("frrc_reader", r, a, b, f), v))
    return out


def parse_imrmc(text: str) -> list[tuple[tuple, str]]:
    """Per-reader and U-statistic rows of an iMRMC R-package output (modalities by position)."""
    out: list[tuple[tuple, str]] = []
    per = _between(text, "==== perReader", "==== Ustat")
    rows = [ln.split() for ln in per.splitlines()[2:] if ln.strip()]
    mods: list[str] = []
    readers: list[str] = []
    for row in rows:
        _, rid, _, _, ma, mb, auca, vara, *rest = row
        if rid not in readers:
            readers.append(rid)
        if ma not in mods:
            mods.append(ma)
        if mb == "NO_MOD":
            out += [(("reader_auc", mods.index(ma), readers.index(rid)), auca),
                    (("reader_var", mods.index(ma), readers.index(rid)), vara)]
        else:
            out.append((("reader_diff_var", readers.index(rid)), rest[-1]))
    us = _between(text, "==== Ustat", "==== MLEstat")
    lines = us.splitlines()
    header = lines[1].split()
    for ln in lines[2:]:
        parts = ln.split()
        if len(parts) < len(header) or not parts[0].isdigit():
            continue
        rec = dict(zip(header, parts[1:]))
        a = mods.index(rec["modalityA"])
        if rec["modalityB"] == "NO_MOD":
            for f, col in (("auc", "AUCA"), ("var", "varAUCA"), ("df", "dfBDG"), ("ci_low", "botCIBDG"),
                           ("ci_high", "topCIBDG"), ("p_value", "pValueBDG"),
                           ("ci_low_normal", "botCInormal"), ("ci_high_normal", "topCInormal")):
                out.append((("modality", a, f), rec[col]))
        else:
            for f, col in (("estimate", "AUCAminusAUCB"), ("var", "varAUCAminusAUCB"), ("df", "dfBDG"),
                           ("ci_low", "botCIBDG"), ("ci_high", "topCIBDG"), ("p_value", "pValueBDG"),
                           ("p_value_normal", "pValueNormal"), ("ci_low_normal", "botCInormal"),
                           ("ci_high_normal", "topCInormal")):
                out.append((("diff", f), rec[col]))
    return out
