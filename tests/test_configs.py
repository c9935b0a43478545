"""Every option of every config group composes, validates and builds."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

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
    cfg = make_cfg(f"experiment={experiment}", smoke=False)
    build_node(cfg.model, "model").check_layer(cfg.layer)


def test_transcoder_and_sae_differ_only_by_sites(make_cfg):
    tc = build_node(make_cfg("dictionary=transcoder").dictionary, "dictionary")
    sae = build_node(make_cfg("dictionary=sae").dictionary, "dictionary")
    assert type(tc) is type(sae)
    assert tc.is_transcoder and not sae.is_transcoder
