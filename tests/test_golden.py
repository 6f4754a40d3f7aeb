"""A golden end-to-end run: SlimGPT on tiny models selects the pinned heads and channels and
gives the pinned logits (tests/data/golden_tiny.json, written once by the float64 reference path
with tests/data/make_golden_tiny.py), on the reference backend and on the C++ core."""
import importlib.util
import json
import pathlib

import pytest
import torch

from slimgpt.testing import assert_close

DATA = pathlib.Path(__file__).with_name("data")
GOLDEN = json.loads((DATA / "golden_tiny.json").read_text())
spec = importlib.util.spec_from_file_location("make_golden_tiny", DATA / "make_golden_tiny.py")
make = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_pinned_selections_and_logits(case, backend):
    heads, channels, logits = make.run(case, backend)
    want = GOLDEN[case]
    assert heads == want["heads"], "pruned heads changed"
    assert channels == want["channels"], "pruned channels changed"
    # the reference path reproduces its own float32 forwards; the float32 core differs by rounding
    assert_close(logits[:, -4:, :16], torch.tensor(want["logits"]), "logits" if backend == "reference" else "backend_logits",
                 err_msg=case)
