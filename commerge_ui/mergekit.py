"""mergekit recipes in and out: a mergekit YAML (`merge_method`, `base_model`, `models`, `parameters`) run here
as the same merge, and the recipe a data-free merge of ours corresponds to written beside its model.

Mapped exactly, for equal per-model `weight`s (this tool scales every task vector alike) and one `density`:

| mergekit | here |
|---|---|
| `linear` (normalize: true, its default) | `average` |
| `task_arithmetic` | `task_arithmetic`, λ = lambda × weight (÷ Σ weights with normalize) |
| `ties` (normalize: true, its default) | `ties` with `ties_mean` (the disjoint mean), `ties_density` = density |
| `ties` with normalize: false | `ties` (the disjoint sum), λ = lambda × weight |
| `dare_linear`, `dare_ties` | `dare`, `dare_ties`, `dare_drop` = 1 − density: the same method, not the same numbers |

DARE's drops are random (drawn with this tool's seed, not mergekit's), and its kept entries are rescaled by
1 / density where mergekit matches each task vector's L1 norm: the run says so. Anything else is refused by
name: other methods (slerp, passthrough, model_stock...), `slices`, per-tensor parameter filters, unequal weights,
`rescale` with TIES, a `tokenizer_source` other than the base's. A recipe may add, per model, `calibration`,
`evaluation` and `name`, and at the top a `commerge:` section with more `methods` and `options`, to run the
activation-based merges beside it.
"""

from __future__ import annotations


import yaml

from .config import safe_name
from .errors import InputError

MAPPED = {"linear": "average", "task_arithmetic": "task_arithmetic", "ties": "ties", "dare_linear": "dare",
          "dare_ties": "dare_ties"}
NORMALIZE_DEFAULT = {"linear": True, "task_arithmetic": False, "ties": True, "dare_linear": False, "dare_ties": False}


def is_recipe(data: object) -> bool:
    return isinstance(data, dict) and "merge_method" in data


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"mergekit recipe: {what} is {value!r}; only one number per model maps here (per-tensor "
                         "filters, lists and gradients do not)")
    return float(value)


def _model_ref(entry: object, base: str | None, index: int) -> str:
    model = entry.get("model") if isinstance(entry, dict) else None
    if isinstance(model, dict):  # mergekit's long form: {model: {model: {path: ...}}} or {model: {path: ...}}
        model = model.get("model", model)
        model = model.get("path") if isinstance(model, dict) else model
    if not isinstance(model, str) or not model.strip():
        raise InputError(f"mergekit recipe: models[{index}] has no 'model'")
    model = model.strip()
    if "+" in model:  # mergekit's base+adapter: the adapter is read directly here
        on, adapter = model.split("+", 1)
        from .adapters import same_base

        if base is None or not same_base(on, base):
            raise InputError(f"mergekit recipe: models[{index}] is '{model}', an adapter on another model than the "
                             "base_model; give the adapter with that base instead")
        model = adapter
    return model


def from_recipe(data: dict) -> tuple[dict, list[str]]:
    """Our config (as a mapping, for parse_config) for a mergekit recipe, and notes on what is not identical."""
    method = data.get("merge_method")
    if "slices" in data:
        raise InputError("mergekit recipe: layer slices (`slices:`) are not supported; give `models:`")
    if method not in MAPPED:
        raise InputError(f"mergekit recipe: merge_method '{method}' has no exact counterpart here (mapped: "
                         f"{', '.join(MAPPED)})")
    if str(data.get("tokenizer_source") or "base") != "base":
        raise InputError(f"mergekit recipe: tokenizer_source '{data['tokenizer_source']}' is not supported; the "
                         "base's vocabulary is kept")
    models = data.get("models") or []
    if not isinstance(models, list) or not models:
        raise InputError("mergekit recipe: no `models:`")
    base = data.get("base_model")
    base = base.strip() if isinstance(base, str) and base.strip() else None
    notes = []
    if base is None:
        if method != "linear":
            raise InputError(f"mergekit recipe: merge_method '{method}' needs a base_model")
        base = _model_ref(models[0], None, 0)
        notes.append(f"no base_model: the first model ({base}) is the base the family and tokenizer come from")
    params = data.get("parameters") or {}
    if not isinstance(params, dict):
        raise InputError("mergekit recipe: `parameters:` must be a mapping")
    normalize = params.get("normalize", NORMALIZE_DEFAULT[method])
    lam = _number(params.get("lambda", 1.0), "parameters.lambda")
    if params.get("rescale") and method == "ties":
        raise InputError("mergekit recipe: ties with rescale: true has no counterpart here")
    experts, weights, densities = [], [], []
    for index, entry in enumerate(models):
        ref = _model_ref(entry, base, index)
        if ref == base and method != "linear":
            continue  # mergekit lists the base among the models at times: its task vector is zero
        p = (entry.get("parameters") or {}) if isinstance(entry, dict) else {}
        weights.append(_number(p.get("weight", params.get("weight", 1.0)), f"models[{index}].parameters.weight"))
        densities.append(_number(p.get("density", params.get("density", 1.0)), f"models[{index}].parameters.density"))
        spec = {"name": _name(entry, ref, index), "model": ref}
        for key in ("calibration", "evaluation"):
            if isinstance(entry, dict) and entry.get(key):
                spec[key] = entry[key]
        experts.append(spec)
    if len(set(weights)) > 1:
        raise InputError(f"mergekit recipe: the models' weights differ ({', '.join(f'{w:g}' for w in weights)}); "
                         "this tool scales every task vector alike: give them one weight")
    if len(set(densities)) > 1:
        raise InputError(f"mergekit recipe: the models' densities differ ({', '.join(f'{d:g}' for d in densities)}); "
                         "give them one density")
    weight, density, count = weights[0], densities[0], len(experts)
    options: dict = {}
    if method == "linear":
        if not normalize and abs(weight * count - 1) > 1e-9:
            raise InputError("mergekit recipe: linear with normalize: false and weights that do not sum to 1 is not "
                             "an average")
    elif method == "ties" and normalize:
        options.update(task_lambda=lam, ties_mean=True, ties_density=density)
    else:
        options["task_lambda"] = lam * weight / (weight * count if normalize else 1.0)
        if method == "ties":
            options["ties_density"] = density
        elif method in ("dare_linear", "dare_ties"):
            options["dare_drop"] = 1.0 - density
            notes.append("DARE's drops are random: drawn with this tool's seed, and the kept entries rescaled by "
                         "1/density (mergekit matches each task vector's L1 norm): the same method, not the same "
                         "numbers")
    if "dtype" in data:
        notes.append(f"dtype {data['dtype']}: the run's dtype is the --dtype option (default float32)")
    extra = data.get("commerge") or {}
    methods = [MAPPED[method], *[m for m in extra.get("methods", []) if m != MAPPED[method]]]
    options = {**options, **(extra.get("options") or {})}
    if not any(e.get("calibration") for e in experts):
        options.setdefault("data_free_shift", False)  # no samples: merged tensor by tensor, as mergekit does
    config = {"base": base, "experts": experts, "methods": methods,
              "options": {("lambda" if k == "task_lambda" else k): v for k, v in options.items()}}
    return config, notes


def _name(entry: object, ref: str, index: int) -> str:
    given = entry.get("name") if isinstance(entry, dict) else None
    name = given if isinstance(given, str) and given.strip() else ref.rstrip("/").rsplit("/", 1)[-1]
    return safe_name(name, f"model{index}")


def to_recipe(method: str, base: str, models: list[str], options: dict) -> str | None:
    """The mergekit recipe of one of our data-free merges (None where mergekit has no such method)."""
    lam = options.get("lambda", options.get("task_lambda"))
    if method == "average":
        recipe = {"merge_method": "linear", "models": [{"model": m, "parameters": {"weight": 1.0}} for m in models]}
    elif method == "task_arithmetic":
        recipe = {"merge_method": "task_arithmetic", "base_model": base,
                  "models": [{"model": m, "parameters": {"weight": lam}} for m in models]}
    elif method == "ties":
        density = options["ties_density"]
        if options.get("ties_mean"):
            recipe = {"merge_method": "ties", "base_model": base, "parameters": {"normalize": True, "lambda": lam},
                      "models": [{"model": m, "parameters": {"weight": 1.0, "density": density}} for m in models]}
        else:
            recipe = {"merge_method": "ties", "base_model": base, "parameters": {"normalize": False},
                      "models": [{"model": m, "parameters": {"weight": lam, "density": density}} for m in models]}
    elif method in ("dare", "dare_ties"):
        recipe = {"merge_method": "dare_linear" if method == "dare" else "dare_ties", "base_model": base,
                  "models": [{"model": m, "parameters": {"weight": lam, "density": 1.0 - options["dare_drop"]}}
                             for m in models]}
    else:
        return None
    head = (f"# The mergekit recipe of this `{method}` merge (commerge_ui): `commerge merge` reads it back as the same "
            "merge.\n" + ("# DARE's random drops differ between the two tools.\n" if method.startswith("dare") else ""))
    return head + yaml.safe_dump(recipe, sort_keys=False)
