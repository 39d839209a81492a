"""What recipes/default_t2i.sh relies on: re-running a bitwise tokenizer run resumes it (its model config holds
tuples, which config.json stores as lists), and another model is still refused."""

import json

import pytest

from nextscale.errors import FieldError
from nextscale.train.bsq import BSQTokenizerObjective
from nextscale.train.run import check_same_run


def test_same_bitwise_run_resumes_and_another_model_is_refused(tmp_path):
    model = {"codebook_dim": 16, "base_ch": 32, "ch_mult": (1, 1, 2), "num_res_blocks": 1, "patch_size": 4}
    run = {"kind": BSQTokenizerObjective.kind, "model": {BSQTokenizerObjective.model_key: model}}
    (tmp_path / "config.json").write_text(json.dumps(run))  # what the first run wrote (tuples became lists)
    check_same_run(BSQTokenizerObjective, str(tmp_path), run)
    other = {"kind": run["kind"], "model": {BSQTokenizerObjective.model_key: {**model, "codebook_dim": 8}}}
    with pytest.raises(FieldError, match="holds a run of another model"):
        check_same_run(BSQTokenizerObjective, str(tmp_path), other)
