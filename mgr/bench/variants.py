"""Named model variants: an arm of a suite may be a whole model configuration, not one algebra.

A sweep's `[variants.NAME]` table holds ModelConfig overrides (any of its fields: a per-layer
attention pattern, feed-forward kinds, widths, options), and an entry of the grid's
`attention` list names either a variant or a registered algebra. So a dense Transformer, a
hybrid stack and a mixture-of-experts model are compared at equal FLOPs with the same
statistics, from configuration alone. The ModelConfig of an entry is the suite's `[model]`
section, then the variant's overrides (a dict-valued field such as `attention_options` is
merged one level deep, so a variant replaces the options of the algebras it names and keeps
the others), then what the suite itself fixes (the vocabulary, and for probes the length).
ModelConfig validates the result; every failure is one line naming the variant.

A variant named like a registered algebra is refused: `attention = ["tropical"]` must never
mean two things. Names are also directory names and arm-name prefixes, hence the charset.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from core.errors import MgrError
from mgr.config import ModelConfig

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def check(variants: Any) -> dict[str, dict[str, Any]]:
    """Validate the names and fields of `variants` ({name: {ModelConfig field: value}}); returns
    a JSON-shaped copy (lists for tuples), as it is recorded in the suite's settings."""
    import attention

    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise MgrError("variants must be tables of ModelConfig fields: [variants.NAME] field = value")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    for name, overrides in variants.items():
        if not NAME.fullmatch(name):
            raise MgrError(f"variant name '{name}' must be letters, digits, '_', '.' or '-'")
        if name in attention.names():
            raise MgrError(f"variant '{name}' has the name of a registered algebra; rename the variant")
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise MgrError(f"variant '{name}': unknown ModelConfig fields {unknown}; "
                           f"valid: {', '.join(sorted(fields))}")
    try:
        return json.loads(json.dumps(variants))
    except (TypeError, ValueError) as e:
        raise MgrError(f"variants must hold plain values (strings, numbers, lists, tables): {e}") from None


def overrides(entry: str, variants: dict) -> dict[str, Any]:
    """The ModelConfig fields a grid entry sets: a variant's table, or a plain algebra name's."""
    return dict(variants[entry]) if entry in variants else {"attention": entry}


def model_config(entry: str, base: dict, variants: dict, *, defaults: dict | None = None,
                 fixed: dict | None = None) -> ModelConfig:
    """The ModelConfig of grid `entry`: `defaults` < `base` ([model]) < its overrides < `fixed`."""
    import attention

    if entry not in variants and entry not in attention.names():
        raise MgrError(f"'{entry}' is neither a variant ({', '.join(variants) or 'none defined'}) nor a "
                       f"registered algebra ({', '.join(attention.names())})")
    mine = overrides(entry, variants)
    clash = sorted(set(mine) & set(fixed or {})) if entry in variants else []
    if clash:
        raise MgrError(f"variant '{entry}' sets {', '.join(clash)}, which the suite fixes (data or task)")
    merged = {**(defaults or {}), **base}
    for key, value in mine.items():
        below = merged.get(key)
        merged[key] = {**below, **value} if isinstance(value, dict) and isinstance(below, dict) else value
    merged.update(fixed or {})
    if entry not in variants:
        return ModelConfig.from_dict(merged)
    try:
        return ModelConfig.from_dict(merged)
    except (TypeError, ValueError) as e:  # MgrError is a ValueError; a wrong type is a TypeError
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise MgrError(f"variant '{entry}': {first}") from None


def changed(theirs: dict | None, mine: dict) -> list[str]:
    """Variants defined in both settings with different overrides (a resumed suite may add
    variants, never redefine one: its finished runs would be scored under the new definition)."""
    theirs = theirs or {}
    return sorted(n for n in set(theirs) & set(mine) if theirs[n] != mine[n])


def algebras(model: ModelConfig) -> list[tuple[str, dict | None]]:
    """The distinct algebras the layers of `model` run (first use first), each with its options."""
    out: dict[str, dict | None] = {}
    for layer in range(model.n_layers):
        name = model.layer_attention(layer)
        out.setdefault(name, model.attention_options.get(name))
    return list(out.items())


@dataclass(frozen=True)
class GatePlan:
    """Which correctness gates a suite checks and which grid entries need each one.

    `checks`: label -> (algebra, options), one per distinct pair any entry uses. The label is
    the algebra's name (its `gates/<label>.json`) when the options are the suite's own, else
    `ALGEBRA@VARIANT` for the first variant that sets other options. `labels`: entry -> the
    labels it needs; an entry runs only if every one of them passed.
    """

    checks: dict[str, tuple[str, dict | None]]
    labels: dict[str, tuple[str, ...]]

    def users(self, label: str) -> list[str]:
        return [e for e, ls in self.labels.items() if label in ls]

    def failed(self, entry: str, gates: dict[str, dict]) -> list[str]:
        return [label for label in self.labels[entry] if not gates[label]["passed"]]


def gate_plan(entries: Iterable[str], model_of: Callable[[str], ModelConfig], base_options: dict) -> GatePlan:
    """The gates of grid `entries` (model_of: entry -> its ModelConfig; base_options: the suite's
    own `attention_options`), each distinct (algebra, options) once however many entries use it."""
    checks: dict[str, tuple[str, dict | None]] = {}
    by_key: dict[tuple[str, str], str] = {}
    labels: dict[str, tuple[str, ...]] = {}
    for entry in entries:
        mine = []
        for name, options in algebras(model_of(entry)):
            key = (name, json.dumps(options or {}, sort_keys=True))
            if key not in by_key:
                own = (options or {}) == (base_options.get(name) or {})
                by_key[key] = name if own else f"{name}@{entry}"
                checks[by_key[key]] = (name, options)
            mine.append(by_key[key])
        labels[entry] = tuple(mine)
    return GatePlan(checks, labels)


def arm_models(settings: dict, gates: dict[str, dict]) -> list[dict]:
    """Per arm of a suite's recorded settings (bench.json or probe.json): its variant (None for
    a plain algebra), the ModelConfig overrides it ran with, and the gates that kept it out."""
    variants = settings.get("variants") or {}
    out = []
    for entry in settings["attention"]:
        failed = sorted(label for label, g in gates.items()
                        if not g.get("passed") and entry in (g.get("used_by") or [label.split("@")[0]]))
        for optimizer in settings["optimizer"]:
            for schedule in settings["schedule"]:
                out.append({"arm": f"{entry}-{optimizer}-{schedule}",
                            "variant": entry if entry in variants else None,
                            "model_overrides": overrides(entry, variants), "gated_out_by": failed})
    return out


def md_lines(settings: dict) -> list[str]:
    """The run.md section naming each variant of the grid and its overrides (empty without any)."""
    variants = settings.get("variants") or {}
    used = [e for e in settings["attention"] if e in variants]
    if not used:
        return []
    return ["", "## Variants", ""] + [f"- `{e}`: {json.dumps(variants[e], sort_keys=True)}" for e in used]
