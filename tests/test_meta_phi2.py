"""The T4 path without a GPU: full-size Phi-2 on the meta device, LoRA counts, trainer
configs under the installed library versions, and keyword drift against their signatures."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import textwrap
import warnings
from pathlib import Path

import pytest
from meta_report import (  # bench/
    EXTRA_TASKS,
    phi2_on_meta,
    recipe_report,
    report_table,
    t4_recipes_markdown,
)

from phi2kit.lora import check_targets
from phi2kit.profiles import get_profile
from phi2kit.recipes import PHI_LORA_TARGETS, TASKS, get_recipe

ROOT = Path(__file__).resolve().parents[1]
PHI2_PARAMETERS = 2_779_683_840  # conventions.md, from the model card's config.json

# Phi-2's Linear layers, (in_features, out_features), from its published config:
# hidden 2560, intermediate 10240, 32 heads x 80 = 2560, 32 decoder layers.
H, INTER, LAYERS = 2560, 10240, 32
SHAPES = {
    "q_proj": (H, H),  # 2560 -> 2560
    "k_proj": (H, H),  # 2560 -> 2560
    "v_proj": (H, H),  # 2560 -> 2560
    "dense": (H, H),  # attention output, 2560 -> 2560
    "fc1": (H, INTER),  # 2560 -> 10240
    "fc2": (INTER, H),  # 10240 -> 2560
}
SCORE_HEAD = H * 3  # PhiForSequenceClassification.score: Linear(2560, 3, bias=False)


@pytest.fixture(scope="module")
def skeleton():
    return phi2_on_meta()


@pytest.fixture(scope="module")
def t4_reports():
    return {task: recipe_report(task, "t4") for task in TASKS}


# --- the skeleton and its module names -------------------------------------------------


def test_meta_phi2_is_full_size_phi2_on_meta(skeleton):
    params = list(skeleton.parameters())
    assert sum(p.numel() for p in params) == PHI2_PARAMETERS
    assert {p.device.type for p in params} == {"meta"}  # nothing allocated
    assert type(skeleton).__name__ == "PhiForCausalLM"


def test_meta_phi2_linear_names_are_the_lora_targets(skeleton):
    layer0 = {
        name.split(".")[-1]: (m.in_features, m.out_features)
        for name, m in skeleton.named_modules()
        if name.startswith("model.layers.0.") and hasattr(m, "in_features")
    }
    assert layer0 == SHAPES
    assert set(PHI_LORA_TARGETS) == set(SHAPES)
    assert check_targets(skeleton, PHI_LORA_TARGETS) == {t: LAYERS for t in PHI_LORA_TARGETS}


@pytest.mark.parametrize("task", TASKS)
def test_every_t4_target_matches(skeleton, t4_reports, task):
    recipe = get_recipe(task, "t4")
    counts = check_targets(skeleton, recipe.target_modules)
    assert all(n >= 1 for n in counts.values()), counts
    # PEFT adapted exactly the modules check_targets counted.
    assert t4_reports[task].matched == counts


def test_every_tiny_target_matches_the_shipped_tiny_model():
    from phi2kit.models import load_model

    model = load_model("tiny", quantize_4bit=False)
    for task in TASKS:
        counts = check_targets(model, get_recipe(task, "tiny").target_modules)
        assert all(n >= 1 for n in counts.values()), (task, counts)


def test_a_typo_in_the_targets_is_named(skeleton):
    with pytest.raises(ValueError, match=r"'dense_proj'"):
        check_targets(skeleton, ["q_proj", "dense_proj"])
    with pytest.raises(ValueError, match=r"'qproj'"):
        recipe_report("sentiment", "t4", target_modules=("qproj", "v_proj"))


# --- trainable parameters, by hand --------------------------------------------------------


def _by_hand(r: int, targets: tuple[str, ...], seq_cls: bool) -> int:
    """r x (in + out) per adapted Linear, in each of the 32 layers, + the score head."""
    per_layer = sum(r * (SHAPES[t][0] + SHAPES[t][1]) for t in targets)
    return LAYERS * per_layer + (SCORE_HEAD if seq_cls else 0)


def test_trainable_parameters_by_hand(t4_reports):
    # Written out for the defaults: all six Linears, r=16 (sentiment, classifier, webglm).
    # per layer: 16 x [4 x (2560 + 2560) + (2560 + 10240) + (10240 + 2560)]
    #          = 16 x [20480 + 12800 + 12800] = 16 x 46080 = 737,280; x 32 = 23,592,960
    assert 16 * (4 * (2560 + 2560) + (2560 + 10240) + (10240 + 2560)) * 32 == 23_592_960
    assert t4_reports["sentiment"].trainable == 23_592_960
    assert t4_reports["webglm"].trainable == 23_592_960
    # classifier: the same + score head 2560 x 3 = 7,680 (no bias) -> 23,600,640
    assert t4_reports["classifier"].trainable == 23_592_960 + 2560 * 3 == 23_600_640
    # chat: r=64 -> 64 x 46080 x 32 = 94,371,840
    assert t4_reports["chat"].trainable == 64 * 46080 * 32 == 94_371_840
    for task, rep in t4_reports.items():
        recipe = get_recipe(task, "t4")
        expected = _by_hand(recipe.lora_r, recipe.target_modules, recipe.task_type == "SEQ_CLS")
        assert rep.trainable == expected, task
        assert rep.adapter_mb == pytest.approx(expected * 4 / 1e6)
        assert rep.total == rep.base + rep.trainable  # frozen base + LoRA (+ score copy)
        assert rep.allocated_bytes == 0, f"{task}: PEFT allocated real tensors"


def test_recipe_overrides_change_the_count():
    rep = recipe_report("sentiment", "t4", lora_r=8, target_modules=("q_proj", "fc2"))
    assert rep.trainable == 32 * 8 * ((2560 + 2560) + (10240 + 2560))  # 4,587,520
    assert rep.matched == {"q_proj": 32, "fc2": 32}


def test_classifier_trains_and_saves_the_score_head(t4_reports):
    rep = t4_reports["classifier"]
    assert rep.task_type == "SEQ_CLS"
    assert "score" in rep.modules_to_save
    assert rep.score_head == (2560, 3)
    # The classifier has no lm_head (51200 x 2560 + 51200 bias) but a 2560 x 3 score head.
    assert rep.base == PHI2_PARAMETERS - (51200 * 2560 + 51200) + SCORE_HEAD
    assert all(r.score_head is None for t, r in t4_reports.items() if t != "classifier")


def test_markdown_table(t4_reports):
    table = report_table(list(t4_reports.values()))
    lines = table.splitlines()
    assert len(lines) == 2 + len(TASKS)
    full = t4_recipes_markdown()
    assert len([r for r in full.splitlines() if r.startswith("| ")]) == 1 + len(TASKS) + 2
    assert "| dpo | CAUSAL_LM | 64 / 16 |" in full and "| grpo | CAUSAL_LM | 16 / 32 |" in full
    assert "| chat | CAUSAL_LM | 64 / 16 |" in table and "94,371,840" in table
    assert "2560→3" in table
    assert "2,779,683,840" in t4_recipes_markdown()


# --- T4 trainer configurations under the installed versions -----------------------------
#
# transformers 5.23's TrainingArguments does not check fp16 against the device when it is
# constructed: it only records mixed_precision="fp16" and resolves the device (the CPU here,
# since use_cpu is False for t4). Accelerate checks fp16 later, in Accelerator.__init__,
# i.e. when a Trainer is built, which needs a real GPU. The only hardware check reached at
# construction is bf16's is_torch_bf16_gpu_available(), which must never be reached on t4:
# we replace it with a tripwire instead of mocking CUDA.


def _build_t4_args(task: str, tmp_path: Path):
    from transformers import TrainingArguments

    from phi2kit.training import common_args, sft_config

    profile = get_profile("t4", check=False)
    recipe = get_recipe(task, profile)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if recipe.task_type == "SEQ_CLS":  # 03's Trainer, as classifier_trainer builds it
            args = TrainingArguments(**common_args(profile, recipe, tmp_path / task))
        else:
            args = sft_config(profile, recipe, tmp_path / task)
    return args, recipe, caught


@pytest.fixture()
def bf16_tripwire(monkeypatch):
    import transformers.training_args as ta

    def tripwire() -> bool:
        raise AssertionError("bf16 validation reached: bf16 is enabled on the t4 profile")

    monkeypatch.setattr(ta, "is_torch_bf16_gpu_available", tripwire)


@pytest.mark.parametrize("task", TASKS)
def test_t4_trainer_config(task, tmp_path, bf16_tripwire):
    args, recipe, _ = _build_t4_args(task, tmp_path)
    assert args.fp16 is True and args.bf16 is False  # trl's SFTConfig defaults to bf16
    assert args.mixed_precision == "fp16"
    assert args.use_cpu is False
    assert args.optim == "paged_adamw_8bit"
    assert args.disable_tqdm is False  # a T4 run shows the Trainer's bar, loss and time left
    assert args.gradient_checkpointing is True
    assert getattr(args, "activation_checkpointing", True) is True  # transformers 5 name
    if recipe.task_type == "CAUSAL_LM":
        assert type(args).__name__ == "SFTConfig"
        assert args.max_length == recipe.max_length
        assert args.completion_only_loss is True
    else:
        assert type(args).__name__ == "TrainingArguments"


def test_t4_trainer_kwargs_are_not_deprecated(tmp_path, bf16_tripwire):
    """No FutureWarning/DeprecationWarning names one of the keywords phi2kit passes."""
    ours = _collected()["SFTConfig"] | _collected()["TrainingArguments"]
    offenders = []
    for task in TASKS:
        _, _, caught = _build_t4_args(task, tmp_path)
        for w in caught:
            if not issubclass(w.category, (FutureWarning, DeprecationWarning)):
                continue
            named = [k for k in ours if re.search(rf"(?<!\w){re.escape(k)}(?!\w)", str(w.message))]
            if named:
                offenders.append(f"{task}: {named}: {w.message}")
    assert not offenders, "\n".join(offenders)


# --- API drift: keywords in the code vs the installed signatures --------------------------

CALLEES = ("from_pretrained", "BitsAndBytesConfig", "LoraConfig", "SFTConfig", "TrainingArguments")
MODEL_LOADERS = re.compile(r"^(AutoModel\w*|Phi\w*For\w+|Phi\w*Model)$")


def _sources() -> list[tuple[str, str]]:
    """(label, python source) of the package and of every notebook's code cells."""
    import nbformat

    out = [(str(p.relative_to(ROOT)), p.read_text()) for p in sorted(ROOT.glob("phi2kit/**/*.py"))]
    for nb_path in sorted(ROOT.glob("notebooks/*.ipynb")):
        nb = nbformat.read(nb_path, as_version=4)
        cells = [c.source for c in nb.cells if c.cell_type == "code"]
        code = "\n".join(
            line
            for cell in cells
            for line in cell.splitlines()
            if not line.lstrip().startswith(("%", "!"))
        )
        out.append((nb_path.name, code))
    return out


def _value_keys(node: ast.AST, scope: ast.AST, funcs: dict) -> set[str]:
    """Constant keys of a dict expression: a literal, dict(k=...), or a local helper's return."""
    if isinstance(node, ast.Dict):
        return {k.value for k in node.keys if isinstance(k, ast.Constant)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if node.func.id == "dict":
            return {k.arg for k in node.keywords if k.arg}
        if node.func.id in funcs:  # e.g. args = common_args(...)
            fn = funcs[node.func.id]
            keys: set[str] = set()
            for ret in (n for n in ast.walk(fn) if isinstance(n, ast.Return) and n.value):
                keys |= _value_keys(ret.value, fn, funcs)
                if isinstance(ret.value, ast.Name):
                    keys |= _name_keys(ret.value.id, fn, funcs)
            return keys
    return set()


def _name_keys(name: str, scope: ast.AST, funcs: dict) -> set[str]:
    """Keys put into the dict variable ``name`` within ``scope``: assignment, d["k"] = ...,
    d.update(k=..., {...})."""
    keys: set[str] = set()
    for n in ast.walk(scope):
        if isinstance(n, (ast.Assign, ast.AnnAssign)):
            targets = n.targets if isinstance(n, ast.Assign) else [n.target]
            for t in targets:
                if isinstance(t, ast.Name) and t.id == name and n.value is not None:
                    keys |= _value_keys(n.value, scope, funcs)
                if (
                    isinstance(t, ast.Subscript)
                    and isinstance(t.value, ast.Name)
                    and t.value.id == name
                    and isinstance(t.slice, ast.Constant)
                ):
                    keys.add(t.slice.value)
        if (
            isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and n.func.attr == "update"
            and isinstance(n.func.value, ast.Name)
            and n.func.value.id == name
        ):
            keys |= {k.arg for k in n.keywords if k.arg}
            for a in n.args:
                keys |= _value_keys(a, scope, funcs)
    return keys


def _collect() -> dict[str, set[str]]:
    """Keyword names passed to each callee (model from_pretrained as 'from_pretrained')."""
    found: dict[str, set[str]] = {c: set() for c in CALLEES}
    found["from_pretrained (not checked)"] = set()
    for label, src in _sources():
        tree = ast.parse(src, filename=label)
        funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        scopes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef))]
        innermost: dict[int, ast.AST] = {}
        for scope in scopes:  # later (deeper) scopes overwrite: keep the innermost
            for n in ast.walk(scope):
                if isinstance(n, ast.Call):
                    innermost[id(n)] = scope
        for scope in scopes:
            for call in (n for n in ast.walk(scope) if isinstance(n, ast.Call)):
                if innermost[id(call)] is not scope:
                    continue
                f = call.func
                name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", None)
                if name not in CALLEES:
                    continue
                if name == "from_pretrained":
                    owner = f.value if isinstance(f, ast.Attribute) else None
                    owner_name = getattr(owner, "id", getattr(owner, "attr", ""))
                    if not MODEL_LOADERS.match(owner_name):
                        name = "from_pretrained (not checked)"
                keys = {k.arg for k in call.keywords if k.arg}
                for k in call.keywords:
                    if k.arg is None and isinstance(k.value, ast.Name):  # **kwargs
                        keys |= _name_keys(k.value.id, scope, funcs)
                    elif k.arg is None:
                        keys |= _value_keys(k.value, scope, funcs)
                found[name] |= keys
    return found


_CACHE: dict[str, set[str]] = {}


def _collected() -> dict[str, set[str]]:
    if not _CACHE:
        _CACHE.update(_collect())
    return _CACHE


def _kwargs_consumed(fn) -> set[str]:
    """String keys a function pops or gets from its ``kwargs``, read from its source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    return {
        n.args[0].value
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr in ("pop", "get")
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == "kwargs"
        and n.args
        and isinstance(n.args[0], ast.Constant)
    }


def _named_params(fn) -> set[str]:
    return {
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    } - {"self", "cls"}


def _accepted() -> dict[str, set[str]]:
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig, PhiConfig, PreTrainedModel, TrainingArguments
    from transformers.models.auto.auto_factory import _BaseAutoModelClass
    from trl import SFTConfig

    # from_pretrained takes **kwargs; what it consumes is: its named parameters, the keys
    # its body (and the Auto class's) pops from kwargs, and the rest go to the config:
    # PhiConfig's parameters and its settable attributes (num_labels is a property).
    config_props = {n for n, v in inspect.getmembers(PhiConfig) if isinstance(v, property)}
    model_kwargs = (
        _named_params(PreTrainedModel.from_pretrained)
        | _kwargs_consumed(PreTrainedModel.from_pretrained)
        | _kwargs_consumed(_BaseAutoModelClass.from_pretrained)
        | _named_params(PhiConfig.__init__)
        | config_props
    )
    return {
        "from_pretrained": model_kwargs,
        "BitsAndBytesConfig": _named_params(BitsAndBytesConfig.__init__),  # **kwargs: "unused"
        "LoraConfig": {f.name for f in dataclasses.fields(LoraConfig)},
        "SFTConfig": {f.name for f in dataclasses.fields(SFTConfig)},
        "TrainingArguments": {f.name for f in dataclasses.fields(TrainingArguments)},
    }


def test_collector_finds_our_keywords():
    """Guard against a collector that finds nothing and so checks nothing."""
    found = _collected()
    assert len(found["SFTConfig"]) >= 20, found["SFTConfig"]  # common_args + update(...)
    assert len(found["TrainingArguments"]) >= 18, found["TrainingArguments"]
    assert {"max_length", "completion_only_loss", "fp16", "optim"} <= found["SFTConfig"]
    assert {"r", "lora_alpha", "target_modules", "task_type"} <= found["LoraConfig"]
    assert {"load_in_4bit", "bnb_4bit_quant_type"} <= found["BitsAndBytesConfig"]
    assert {"dtype", "quantization_config", "num_labels"} <= found["from_pretrained"]


def test_keywords_exist_in_installed_signatures():
    found, accepted = _collected(), _accepted()
    unknown = {c: sorted(found[c] - accepted[c]) for c in accepted if found[c] - accepted[c]}
    assert not unknown, f"keywords the installed libraries do not accept: {unknown}"
    assert "trust_remote_code" not in found["from_pretrained"]


def test_no_deprecated_trainer_fields():
    """TrainingArguments marks renamed fields 'Deprecated alias of ...' in their help."""
    from transformers import TrainingArguments

    deprecated = {
        f.name: f.metadata.get("help", "")
        for f in dataclasses.fields(TrainingArguments)
        if f.metadata.get("help", "").lower().startswith("deprecated")
    }
    # The detection works: transformers 5 keeps gradient_checkpointing as a deprecated alias.
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    if "activation_checkpointing" in names:
        assert "gradient_checkpointing" in deprecated
    used = (_collected()["SFTConfig"] | _collected()["TrainingArguments"]) & set(deprecated)
    assert not used, {k: deprecated[k] for k in used}


def test_dpo_and_grpo_recipes_count_like_the_adapters_they_continue():
    """DPO trains 06's chat adapter (r=64), GRPO 04's (r=16): the same counts, by hand."""
    assert EXTRA_TASKS == ("dpo", "grpo")
    dpo, grpo = recipe_report("dpo", "t4"), recipe_report("grpo", "t4")
    assert dpo.trainable == 64 * 46080 * 32 == 94_371_840
    assert grpo.trainable == 16 * 46080 * 32 == 23_592_960
    assert dpo.matched == grpo.matched == {t: LAYERS for t in PHI_LORA_TARGETS}
    assert dpo.allocated_bytes == grpo.allocated_bytes == 0
