"""Reading JSON that never crashes, PV sets that are checked on load, outputs written atomically."""

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.core.io import (
    JsonLimits,
    atomic_file,
    atomic_output_dir,
    clean_stale_temporaries,
    current_umask,
    jsonl_objects,
    parse_json,
    write_json_atomic,
)
from lmsanitator.data.inputs import parse_input_records, read_jsonl_inputs
from lmsanitator.data.pvset import FORMAT, PV_TARGETS, PVSet
from lmsanitator.models import TARGETS

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODELS = [
    SimpleNamespace(task=SimpleNamespace(kind="sequence", pair=False)),
    SimpleNamespace(task=SimpleNamespace(kind="sequence", pair=True)),
    SimpleNamespace(task=SimpleNamespace(kind="token", pair=False)),
]


# ============================================================================ JSON that never crashes
@FAST
@given(st.binary(max_size=400))
def test_any_bytes_give_records_or_one_line_error(data):
    try:
        out = list(jsonl_objects(data, "in.jsonl"))
    except LMSanitatorError as exc:
        assert "\n" not in str(exc)
    else:
        assert all(isinstance(obj, dict) for _, obj in out)
    try:
        parse_json(data, "body")
    except LMSanitatorError as exc:
        assert "\n" not in str(exc)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=20,
)


@FAST
@given(st.lists(json_values, max_size=5), st.text(max_size=40))
def test_any_json_gives_inputs_or_one_line_error(values, noise):
    """Parsed records of any shape (and text with any characters) go through the input checks of
    every task kind without another exception."""
    text = "\n".join(json.dumps(v) for v in values) + "\n" + noise
    try:
        objects = list(jsonl_objects(text, "in.jsonl"))
    except LMSanitatorError:
        return
    for model in MODELS:
        try:
            texts, pairs = parse_input_records(objects, model, "in.jsonl")
        except LMSanitatorError as exc:
            assert "\n" not in str(exc)
        else:
            assert len(texts) == len(objects)


@FAST
@given(st.text(), st.text())
def test_records_with_any_text_round_trip(text, pair):
    line = json.dumps({"text": text, "text_pair": pair}, ensure_ascii=False)
    assert list(jsonl_objects(line + "\n", "x")) == [(1, {"text": text, "text_pair": pair})]


@pytest.mark.parametrize(
    "raw,msg",
    [
        ('{"text": "\\ud800"}', "surrogate"),  # before: TypeError / HTTP 500
        ("[" * 100_000 + "]" * 100_000, "nesting deeper than 32"),  # before: RecursionError
        ('{"n": ' + "9" * 5000 + "}", "number longer than 100"),  # before: ValueError
        ('{"n": 1e400}', "out of range"),
        ('{"n": NaN}', "NaN is not JSON"),
        ('{"text": "a"', "not valid JSON"),
    ],
)
def test_hostile_json_is_refused_in_one_line(raw, msg):
    with pytest.raises(LMSanitatorError, match=msg) as e:
        parse_json(raw.encode(), "request body")
    assert "\n" not in str(e.value)
    with pytest.raises(LMSanitatorError, match=msg if msg != "not valid JSON" else "invalid JSON on line 2"):
        list(jsonl_objects("{}\n" + raw, "in.jsonl"))


def test_limits_are_configurable_and_bound_strings_and_records():
    small = JsonLimits(max_depth=2, max_string_chars=5, max_record_chars=50)
    assert parse_json('{"a": [1]}', "x", small) == {"a": [1]}
    for raw, msg in (
        ('{"a": [[1]]}', "deeper"),
        ('{"a": "abcdef"}', "longer than 5"),
        (" " * 60, "longer than 50"),
    ):
        with pytest.raises(LMSanitatorError, match=msg):
            parse_json(raw, "x", small)
    # brackets inside strings are not nesting
    assert parse_json('{"a": "[[[[[[", "b": "\\"]]"}', "x", JsonLimits(max_depth=1)) == {
        "a": "[[[[[[",
        "b": '"]]',
    }


def test_jsonl_lines_end_at_newline_only():
    # before: str.splitlines split these valid lines at U+2028 / U+0085
    text = '{"text": "a\u2028b"}\r\n\n{"text": "c\x85d"}\n   \n'
    assert list(jsonl_objects(text, "x")) == [(1, {"text": "a\u2028b"}), (3, {"text": "c\x85d"})]
    assert list(jsonl_objects(text.encode(), "x"))[1][0] == 3
    with pytest.raises(LMSanitatorError, match="not UTF-8"):
        list(jsonl_objects(b'{"text": "caf\xe9"}', "x"))
    with pytest.raises(LMSanitatorError, match="line 1 of x is not a JSON object"):
        list(jsonl_objects("[1]", "x"))


def test_read_jsonl_inputs(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text('{"text": "one\u2028line"}\n{"text": "two"}\n', encoding="utf-8")
    assert read_jsonl_inputs(p, MODELS[0]) == (["one\u2028line", "two"], None)
    p.write_text('{"text": "\\udfff"}\n')
    with pytest.raises(LMSanitatorError, match="surrogate"):
        read_jsonl_inputs(p, MODELS[0])
    with pytest.raises(LMSanitatorError, match="surrogate"):  # objects that did not come through the parser
        parse_input_records([(0, {"text": "\ud800"})], MODELS[0], "request")


# ============================================================================ PV sets checked on load
def _pvfile(path, pvs, drop=(), **meta):
    m = {"format": FORMAT, "hidden_size": pvs.shape[1], "count": len(pvs), "target": "cls", **meta}
    m = {k: v for k, v in m.items() if k not in drop}
    save_file({"pvs": pvs}, str(path), metadata={"lmsanitator": json.dumps(m)})
    return path


@pytest.mark.parametrize(
    "pvs,drop,meta,msg",
    [
        (torch.ones(2, 8), ("hidden_size",), {}, "lacks hidden_size"),  # before: KeyError traceback
        (torch.ones(2, 8), ("target",), {}, "lacks target"),
        (torch.full((2, 8), float("nan")), (), {}, "2 PV\\(s\\) hold NaN"),  # before: accepted
        (torch.ones(2, 8), (), {"hidden_size": 16}, "inconsistent"),
        (torch.ones(2, 8), (), {"hidden_size": "8"}, "positive integer"),
        (torch.ones(2, 8), (), {"target": "pooler"}, "target 'pooler'"),
        (torch.ones(2, 8), (), {"count": 3}, "count 3"),
        (torch.ones(2, 8), (), {"seeds": "x"}, "'seeds' must be a list"),
        (torch.ones(2, 8, dtype=torch.int64), (), {}, "floating point"),
    ],
)
def test_a_bad_pv_set_is_refused_in_one_line(tmp_path, pvs, drop, meta, msg):
    f = _pvfile(tmp_path / "p.safetensors", pvs, drop, **meta)
    with pytest.raises(LMSanitatorError, match=msg) as e:
        PVSet.load(f)
    assert "\n" not in str(e.value)


def test_pv_targets_are_the_models_targets(tmp_path):
    assert PV_TARGETS == tuple(TARGETS)
    ok = PVSet.load(_pvfile(tmp_path / "ok.safetensors", torch.randn(3, 8), seeds=None))
    assert len(ok) == 3 and ok.seeds == []


# ============================================================================ atomic outputs
def _mode(p):
    return os.stat(p).st_mode & 0o777


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_get_the_users_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        with atomic_output_dir(tmp_path / "out") as tmp:
            (tmp / "a.txt").write_text("x")
            # a writer that saves through its own private temporary file (as tuned-model weights did)
            (tmp / "sub").mkdir(mode=0o700)
            fd, private = tempfile.mkstemp(dir=tmp / "sub")
            os.close(fd)
            os.replace(private, tmp / "sub" / "w.safetensors")
        write_json_atomic(tmp_path / "r.json", {"a": 1})
        PVSet(pvs=torch.ones(1, 4), target="cls").save(tmp_path / "p.safetensors")
    finally:
        os.umask(old)
    # before: 0700 / 0600 whatever the umask (tempfile's defaults)
    assert _mode(tmp_path / "out") == _mode(tmp_path / "out" / "sub") == 0o777 & ~umask
    assert (
        _mode(tmp_path / "out" / "a.txt")
        == _mode(tmp_path / "out" / "sub" / "w.safetensors")
        == 0o666 & ~umask
    )
    assert _mode(tmp_path / "r.json") == _mode(tmp_path / "p.safetensors") == 0o666 & ~umask


def test_temporaries_go_on_every_exit_path(tmp_path):
    for exc in (RuntimeError, KeyboardInterrupt, SystemExit):
        with pytest.raises(exc), atomic_output_dir(tmp_path / "out"):
            raise exc()
        with pytest.raises(exc), atomic_file(tmp_path / "f.json"):
            raise exc()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("old")
    with pytest.raises(IsADirectoryError), atomic_file(tmp_path / "out"):  # the final rename fails
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (tmp_path / "out" / "keep").exists()


def test_a_killed_runs_temporaries_are_cleaned_next_time(tmp_path, caplog):
    code = (
        "import os, signal, sys\n"
        "from lmsanitator.core.io import atomic_output_dir, atomic_file\n"
        "with atomic_output_dir(sys.argv[1]) as tmp, atomic_file(sys.argv[2]) as f:\n"
        "    (tmp / 'half').write_text('x'); f.write_text('half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    out, res = tmp_path / "out", tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-c", code, str(out), str(res)], check=False)
    assert proc.returncode == -signal.SIGKILL
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and all(n.startswith((".out.tmp-", ".r.json.tmp-")) for n in left)
    (tmp_path / ".out.tmp-nopid").mkdir()  # an older version's name: whose it is cannot be told
    with caplog.at_level(logging.WARNING, logger="lmsanitator"), atomic_output_dir(out) as tmp:
        (tmp / "done").write_text("x")
    write_json_atomic(res, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.tmp-nopid", "out", "r.json"]
    assert "stale temporary" in caplog.text and ".out.tmp-nopid" in caplog.text
    # a live process's temporary is left alone
    live = tmp_path / f".r.json.tmp-{os.getppid()}-x"
    live.write_text("busy")
    assert clean_stale_temporaries(res) == [] and live.exists()
