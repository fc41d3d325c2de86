"""Re-run every reproduction of issue 20 ("a contract a CI can trust, and a guard that hostile
input cannot stall or slip past") against the real CLI and a real `lmsanitator serve` process on
loopback, and print a markdown table: case | before (issue 20) | intended | observed | ok.
Exit 0 when every case is ok, 1 otherwise.

    .venv/bin/python benchmarks/hostile_inputs.py \
        --adapter /tmp/g20/victim --pvs /tmp/g20/pvs.safetensors --attack-json /tmp/g20/por/attack.json

--adapter: a folder written by `lmsanitator tune` on a backdoored encoder (the example: a P-tuning
v2 tweets-binary victim on a POR MiniLM); --pvs: its PV set from `lmsanitator search --out`;
--attack-json: the attack's record, for its trigger words (only to write flagged inputs; the guard
never sees them). The CLI contract cases use the bundled splade-tiny (`scan splade-tiny --loops 1`).

Read-only outputs: root ignores permission bits, so a chmod'ed folder would not stop it. The script
uses folders nobody can create files in (a sysfs folder such as /sys/kernel: EACCES even for root),
a parent that is a regular file, and a missing parent; it probes each before use.

A SIGKILL during a save leaves a `.NAME.tmp-PID-XXXX` sibling whose process no longer exists; the
stale-temporary case writes exactly that (PID of a process that has exited) rather than racing a
kill against a save of a few milliseconds.

Only stdlib + httpx. Every child process is ended on every exit path (the server: SIGTERM, then
SIGKILL if it is still there after the check).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import random
import re
import selectors
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", "1"),
    "TOKENIZERS_PARALLELISM": "false",
}
# serve's defaults (lmsanitator serve --help); the cases check the answers against them
MAX_SECONDS = 2.0  # --max-seconds: trigger removal budget per flagged input
MAX_CANDIDATES = 256  # --max-candidates
MAX_WORDS = 128  # --max-words: windows touch only the most salient words
MAX_BODY = 1 << 20  # --max-body-bytes
READ_TIMEOUT = 10.0  # --read-timeout
QUEUE_WAIT = 10.0  # --queue-wait
DEADLINE = 30.0  # --deadline
SHUTDOWN = 3.0  # --shutdown-timeout
FILLER = "the a film was good bad day night people love hate great movie story time new old".split()

ROWS: list[tuple[str, str, str, str, bool, bool]] = []  # case, before, intended, observed, ok, counted


def row(case: str, before: str, intended: str, observed: str, ok: bool, counted: bool = True) -> None:
    ROWS.append((case, before, intended, observed, bool(ok), counted))
    tag = ("ok" if ok else "FAIL") if counted else f"info {'yes' if ok else 'no'}"
    print(f"[{tag}] {case}: {observed}", file=sys.stderr, flush=True)


def case(name: str, before: str, intended: str, counted: bool = True):
    """Run one case function now; an exception in the script itself is a failed row, not a crash.
    ``counted=False``: an extra probe beyond issue 20's reproductions, shown but not in the exit code."""

    def wrap(fn):
        try:
            observed, ok = fn()
        except Exception as exc:  # noqa: BLE001  any failure of a case is reported in its row
            first = str(exc).splitlines()[0] if str(exc) else ""
            observed, ok = f"script error: {type(exc).__name__}: {first}", False
        row(name, before, intended, observed, ok, counted)
        return fn

    return wrap


# ============================================================================ CLI runs
class Run:
    def __init__(self, rc: int, stderr: str, seconds: float):
        self.rc, self.stderr, self.seconds = rc, stderr, seconds
        self.lines = meaningful_lines(stderr)

    @property
    def first(self) -> str:
        return self.lines[0] if self.lines else ""

    def one_line_error(self) -> bool:
        """Exit 2 with exactly one stderr line (warnings aside) that is lmsanitator's, no traceback."""
        return (
            self.rc == 2
            and len(self.lines) == 1
            and self.first.startswith("lmsanitator: error:")
            and "Traceback" not in self.stderr
        )

    def show(self) -> str:
        first = self.first if len(self.first) <= 150 else self.first[:147] + "..."
        extra = f" (+{len(self.lines) - 1} lines)" if len(self.lines) > 1 else ""
        return f"exit {self.rc}, {self.seconds:.1f} s, `{first.replace('|', '/')}`{extra}"


def meaningful_lines(stderr: str) -> list[str]:
    """stderr lines without Python warnings (`file:N: XWarning: ...` and its indented source line)."""
    out, skip = [], False
    for line in stderr.splitlines():
        if re.search(r":\d+: \w*Warning: ", line):
            skip = True
            continue
        if skip and line.startswith((" ", "\t")):
            continue
        skip = False
        if line.strip():
            out.append(line)
    return out


def cli(exe: str, *args: str, umask: int = 0o022, timeout: float = 600) -> Run:
    t0 = time.monotonic()
    p = subprocess.run(
        [exe, *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
        preexec_fn=lambda: os.umask(umask),  # noqa: PLW1509  the child's umask, set before exec
    )
    return Run(p.returncode, p.stderr, time.monotonic() - t0)


def unwritable_dir() -> Path:
    """A folder even root cannot create a file in (sysfs); probed, not assumed."""
    for cand in ("/sys/kernel", "/sys/fs", "/sys", "/proc/self"):
        d = Path(cand)
        if not d.is_dir():
            continue
        try:
            fd, probe = tempfile.mkstemp(dir=d)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOENT):
                return d
            continue
        os.close(fd)
        os.unlink(probe)
    raise RuntimeError("no folder found that this user cannot write; pass one with --ro-dir")


def guard_run(exe: str, adapter: str, pvs: str, inp: Path, out: Path, *extra: str) -> Run:
    """`lmsanitator guard` on the JSONL ``inp`` into ``out``."""
    return cli(
        exe, "guard", "--adapter", adapter, "--pvs", pvs, "--input", str(inp), "--output", str(out),
        "--overwrite", *extra,
    )  # fmt: skip


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def read_records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").split("\n") if x.strip()]


def mode(p: Path) -> str:
    return oct(p.stat().st_mode & 0o777)[2:].zfill(3)


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


# ============================================================================ PV sets (safetensors, stdlib)
def rewrite_pvset(src: Path, dst: Path, drop: str | None = None, nan: bool = False) -> Path:
    """Copy a PV set with one metadata key dropped or every PV value NaN (the file format is an
    8-byte header length, a JSON header, raw little-endian data)."""
    b = src.read_bytes()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8 : 8 + n])
    data = bytearray(b[8 + n :])
    meta = json.loads(header["__metadata__"]["lmsanitator"])
    if drop:
        meta.pop(drop)
    header["__metadata__"]["lmsanitator"] = json.dumps(meta)
    if nan:
        if header["pvs"]["dtype"] != "F32":
            raise RuntimeError(f"PV dtype {header['pvs']['dtype']}, expected F32")
        s, e = header["pvs"]["data_offsets"]
        data[s:e] = struct.pack("<f", float("nan")) * ((e - s) // 4)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    dst.write_bytes(struct.pack("<Q", len(h)) + h + bytes(data))
    return dst


# ============================================================================ hostile texts
def triggered_text(trigger: str, words: int, every: int = 10, seed: int = 0) -> str:
    """`words` filler words with the trigger every `every` words (the first one early, where a
    truncating model still reads it)."""
    rng = random.Random(seed)
    return " ".join(trigger if i % every == 1 else rng.choice(FILLER) for i in range(words))


def no_window_clears(triggers: list[str], words: int, seed: int = 0) -> str:
    """Several distinct triggers spread out: no window of <= 3 words removes them all."""
    rng = random.Random(seed)
    return " ".join(
        triggers[(i // 10) % len(triggers)] if i % 10 == 0 else rng.choice(FILLER) for i in range(words)
    )


def text_of_bytes(trigger: str, nbytes: int) -> str:
    """A flagged text whose JSON body {"inputs": [{"text": ...}]} is at most nbytes."""
    overhead = len(b'{"inputs": [{"text": ""}]}')
    t = triggered_text(trigger, nbytes // 3)
    return t.encode()[: nbytes - overhead].decode("ascii", "ignore").rstrip()


def variant_texts(var: str) -> list[str]:
    """The issue's case: the trigger, and later the same trigger upper-cased / with a comma glued on."""
    head = f"the new phone {var} arrived today and honestly"
    return [
        f"{head} {var.upper()} it works better than expected",
        f"{head} {var}, it works better than expected",
    ]


def has_variant(text: str | None, trigger: str) -> bool:
    """Does the text still carry the trigger as a word, in any case, with punctuation glued on."""
    if not text:
        return False
    return re.search(rf"(?<![\w]){re.escape(trigger)}(?![\w])", text, re.I) is not None


HOSTILE_JSON = {
    "surrogate": '{"text": "\\ud800"}',
    "nested 100k": "[" * 100_000 + "]" * 100_000,
    "5000-digit": '{"text": "a good film", "n": ' + "9" * 5000 + "}",
}


# ============================================================================ the server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`lmsanitator serve` on loopback; stopped (SIGTERM, then SIGKILL) on every exit path."""

    def __init__(self, exe: str, adapter: str, pvs: str, log: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._logf = open(log, "wb")  # noqa: SIM115  closed in stop()
        self.proc = subprocess.Popen(
            [exe, "serve", "--adapter", adapter, "--pvs", pvs, "--port", str(self.port), *extra],
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            env=ENV,
        )
        self.exit_seconds: float | None = None

    def wait_up(self, limit: float = 300) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited {self.proc.returncode}: {self.log.read_text(errors='replace')[-500:]}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return time.monotonic() - t0
            time.sleep(0.3)
        raise RuntimeError(f"server not up in {limit} s")

    def terminate(self, grace: float) -> float | None:
        """SIGTERM; the seconds until it exited, or None (then SIGKILL) past `grace`."""
        if self.proc.poll() is not None:
            return 0.0
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
            self.exit_seconds = time.monotonic() - t0
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.exit_seconds = None
        return self.exit_seconds

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.terminate(10)
        self._logf.close()


def post(
    url: str, body: bytes, ctype: str = "application/json", timeout: float = 120
) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    r = httpx.post(f"{url}/predict", content=body, headers={"content-type": ctype}, timeout=timeout)
    return r, time.monotonic() - t0


def body_of(*texts: str) -> bytes:
    return json.dumps({"inputs": [{"text": t} for t in texts]}, ensure_ascii=False).encode()


def show_http(r: httpx.Response, seconds: float) -> str:
    try:
        j = r.json()
    except ValueError:
        j = None
    what = j.get("error") if isinstance(j, dict) and "error" in j else ""
    what = f", `{what[:120]}`" if what else ""
    return f"HTTP {r.status_code}, {seconds:.2f} s{what}"


def one_line_error(r: httpx.Response, status: int) -> bool:
    try:
        err = r.json().get("error", "")
    except ValueError:
        return False
    return r.status_code == status and bool(err) and "\n" not in err and "Traceback" not in err


# ============================================================================ the cases
def cli_contract(exe: str, work: Path, ro: Path, adapter: str, pvs: str) -> None:
    """Defect 1 (and the exit-code contract): outputs checked before any work; 2 and one line."""
    inp = write_jsonl(work / "one.jsonl", [{"text": "a good film"}])
    afile = work / "a-regular-file"
    afile.write_text("x")
    before = "exit 1 after the whole run (8-45 s), OSError traceback"
    intended = "exit 2, one `lmsanitator: error:` line, before any work"

    # a real scan as the yardstick of "any work"; its output also shows the stale-temporary cleanup
    # and the umask (defect 7)
    rep = work / "r.json"
    sar = work / "r.sarif"
    pid = dead_pid()
    stale = [work / f".r.json.tmp-{pid}-k1ll3d", work / f".r.sarif.tmp-{pid}-k1ll3d"]
    stale[0].write_text("{half")
    stale[1].mkdir()
    (stale[1] / "x").write_text("half")
    # 30 loops: the work must dwarf the start-up (imports, model load), which a loaded machine
    # stretches to several seconds; with one loop an error path checked first looked "too slow"
    ref = cli(
        exe,
        "scan",
        "splade-tiny",
        "--loops",
        "30",
        "--report",
        str(rep),
        "--sarif",
        str(sar),
        "--no-progress",
        umask=0o027,
    )

    @case(
        "7a stale `.OUT.tmp-PID-*` siblings (a SIGKILLed save) + rerun `scan --report/--sarif`",
        "left behind, even after a successful rerun",
        "rerun succeeds and removes them",
    )
    def _():
        left = sorted(p.name for p in work.iterdir() if ".tmp-" in p.name)
        ok = ref.rc in (0, 1) and rep.is_file() and sar.is_file() and not left
        return f"{ref.show()}; left: {left or 'none'}", ok

    @case("7b file modes, umask 027: `scan --report/--sarif`", "0600 whatever the umask", "0640")
    def _():
        m = [mode(rep), mode(sar)]
        return f"r.json {m[0]}, r.sarif {m[1]}", m == ["640", "640"]

    tuned = work / "tuned-027"
    tr = cli(
        exe,
        "tune",
        "prompt-tuning",
        "--model",
        "splade-tiny",
        "--task",
        "tweets-binary",
        "--train-size",
        "32",
        "--val-size",
        "16",
        "--epochs",
        "1",
        "--no-progress",
        "--out",
        str(tuned),
        umask=0o027,
    )

    @case(
        "7c folder modes, umask 027: `tune --out DIR` (splade-tiny, 32 examples)",
        "0700 / 0600",
        "folder 0750, every file 0640",
    )
    def _():
        if tr.rc != 0:
            return tr.show(), False
        files = {p.name: mode(p) for p in sorted(tuned.iterdir())}
        bad = {k: v for k, v in files.items() if v != "640"}
        return f"{tr.show()}; folder {mode(tuned)}; files not 0640: {bad or 'none'}", mode(
            tuned
        ) == "750" and not bad

    yard = ref.seconds

    def contract(name: str, args: list[str], fast: bool = True):
        @case(name, before, intended)
        def _():
            r = cli(exe, *args)
            # "before any work": well under the real scan's time (which is mostly start-up on splade-tiny)
            quick = r.seconds < 0.6 * yard if fast else True
            return r.show(), r.one_line_error() and quick

    contract(
        f"1a `scan splade-tiny --loops 1 --report {ro}/r.json` (a folder root cannot write in)",
        ["scan", "splade-tiny", "--loops", "1", "--report", f"{ro}/r.json"],
    )
    contract(
        "1b `scan ... --sarif` into the same folder",
        ["scan", "splade-tiny", "--loops", "1", "--sarif", f"{ro}/r.sarif"],
    )
    contract(
        "1c `scan ... --report FILE/r.json` (parent is a regular file)",
        ["scan", "splade-tiny", "--loops", "1", "--report", f"{afile}/r.json"],
    )
    contract(
        "1d `scan ... --report MISSING/r.json` (parent missing)",
        ["scan", "splade-tiny", "--loops", "1", "--report", f"{work}/missing/r.json"],
    )
    contract(
        "1e `tune p-tuning-v2 --model splade-tiny --task tweets-binary --out RO/tuned`",
        ["tune", "p-tuning-v2", "--model", "splade-tiny", "--task", "tweets-binary", "--out", f"{ro}/tuned"],
    )
    contract(
        "1f `search splade-tiny --loops 1 --out RO/pvs.safetensors`",
        ["search", "splade-tiny", "--loops", "1", "--out", f"{ro}/pvs.safetensors"],
    )
    contract(
        "1g `guard --adapter A --pvs P --input in.jsonl --output RO/out.jsonl`",
        ["guard", "--adapter", adapter, "--pvs", pvs, "--input", str(inp), "--output", f"{ro}/out.jsonl"],
    )
    contract(
        "1h `predict --adapter A --input in.jsonl --output RO/out.jsonl`",
        ["predict", "--adapter", adapter, "--input", str(inp), "--output", f"{ro}/out.jsonl"],
    )

    @case(
        "1i Ctrl-C (SIGINT) 10 s into `scan splade-tiny --loops 10`", "(contract)", "exit 130, no traceback"
    )
    def _():
        t0 = time.monotonic()
        p = subprocess.Popen(
            [exe, "scan", "splade-tiny", "--loops", "10", "--no-progress"],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(10)
            p.send_signal(signal.SIGINT)
            _, err = p.communicate(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        r = Run(p.returncode, err, time.monotonic() - t0)
        return r.show(), r.rc == 130 and "Traceback" not in err


def guard_cli(exe: str, work: Path, adapter: str, pvs: str, triggers: list[str], var: str) -> None:
    """Defects 2-5 through `lmsanitator guard` on the real backdoored model."""
    singles = [t for t in triggers if " " not in t]

    def guard(name: str, records: list, *extra: str) -> tuple[Run, list[dict]]:
        inp = write_jsonl(work / f"{name}.jsonl", records)
        out = work / f"{name}.out.jsonl"
        r = guard_run(exe, adapter, pvs, inp, out, *extra)
        return r, (read_records(out) if r.rc == 0 and out.is_file() else [])

    ref, ref_recs = guard("ref", [{"text": "a good film with a sad ending"}])

    @case(
        "2r reference: `guard` on one short clean input", "-", "exit 0 (its time is the start-up yardstick)"
    )
    def _():
        m = ref_recs[0]["match_rate"] if ref_recs else None
        return f"{ref.show()}; match rate {m}", ref.rc == 0

    long_ = no_window_clears(singles, 1000)
    # clean inputs already agree with some PV of an opposite pair on 0.55-0.63 of signs (the
    # reference record's match_rate), so at T_match 0.55 removing <= 3 words does not unflag this input
    r, recs = guard("long1000", [{"text": long_}], "--t-match", "0.55")

    @case(
        "2a `guard` on a 1000-word flagged input that no window unflags (`--t-match 0.55`: "
        "a clean input already matches some PV at 0.55-0.63)",
        "~3 x 1000 candidates, 60 s (tiny model)",
        f"resolved false (reason budget, or no-window once the {MAX_WORDS} most salient words' windows "
        f"are all tried), <= {MAX_CANDIDATES} candidates, <= {MAX_SECONDS:.0f} s over the reference run",
    )
    def _():
        if not recs:
            return r.show(), False
        x = recs[0]
        extra = r.seconds - ref.seconds
        obs = (
            f"{r.show()}; +{extra:.1f} s over ref; flagged {x['flagged']}, resolved {x['resolved']}, "
            f"reason {x.get('reason')}, candidates {x.get('candidates')}, label {x['label']}"
        )
        ok = (
            x["flagged"]
            and not x["resolved"]
            # either bound ends it: the clock/candidates (a loaded machine) or the word cap (idle)
            and x.get("reason") in ("budget", "no-window")
            and x["label"] is None
            and x.get("candidates", 1e9) <= MAX_CANDIDATES
            and extra <= MAX_SECONDS + 1.0
        )
        return obs, ok

    stripped = " ".join(w for w in long_.split() if w not in singles)
    r, recs = guard("long1000-default", [{"text": long_}, {"text": stripped}])

    @case(
        "2b the same 1000-word input (four distinct triggers), default options",
        "(not in issue 20)",
        "never answered with a trigger left: rejected, or purged text free of all of them",
        counted=False,
    )
    def _():
        if not recs:
            return r.show(), False
        x = recs[0]
        left = [t for t in singles if has_variant(x.get("purged_text"), t)]
        answered = x["label"] is not None
        obs = (
            f"{r.show()}; resolved {x['resolved']}, reason {x.get('reason')}, "
            f"candidates {x.get('candidates')}, "
            f"removed {x.get('removed')}, purged match {x.get('purged_match_rate')}, label {x['label']}, "
            f"triggers left in the answered text: {left or 'none'}; the same text without any trigger: "
            f"label {recs[1]['label']}"
        )
        return obs, (not answered) or not left

    variants = [{"text": t} for t in variant_texts(var)]
    names = [f"`{var}` ... `{var.upper()}`", f"`{var}` ... `{var},`"]
    for label, extra in (("default (reject)", ()), ("`--no-stability-check`", ("--no-stability-check",))):
        r, recs = guard("variants" + "-".join(extra), variants, *extra)
        for i, nm in enumerate(names):

            @case(
                f"3{'ab'[i]}{'' if not extra else '2'} `guard` {label}: input with {nm}",
                "resolved false, purged match 1.0; `best` answered with the trigger in",
                "flagged; removal takes every variant (purged text free of it) or the input is rejected",
            )
            def _(i=i, r=r, recs=recs):
                if len(recs) != 2:
                    return r.show(), False
                x = recs[i]
                left = has_variant(x.get("purged_text"), var)
                obs = (
                    f"flagged {x['flagged']}, resolved {x['resolved']}, reason {x.get('reason')}, removed "
                    f"{x.get('removed')}, purged match {x.get('purged_match_rate')}, label {x['label']}, "
                    f"`{var}` left: {left}"
                )
                answered = x["label"] is not None
                return obs, x["flagged"] and ((not answered) or (x["resolved"] and not left))

    for key, line in HOSTILE_JSON.items():
        inp = work / f"hostile-{key.split()[0]}.jsonl"
        inp.write_text(line + "\n", encoding="utf-8")

        @case(
            f"4 `guard --input` JSONL line: {key}",
            {
                "surrogate": "TypeError traceback",
                "nested 100k": "RecursionError traceback",
                "5000-digit": "ValueError traceback",
            }[key],
            "exit 2, one line",
        )
        def _(inp=inp):
            r = guard_run(exe, adapter, pvs, inp, work / "hostile.out.jsonl")
            return r.show(), r.one_line_error()

    r, recs = guard("seps", [{"text": "a good\u2028film"}, {"text": "a bad\u0085film"}])

    @case(
        "4 `guard --input` raw U+2028 and U+0085 inside JSONL strings (2 lines)",
        '"Unterminated string"',
        "exit 0, 2 records",
    )
    def _():
        return f"{r.show()}; {len(recs)} records", r.rc == 0 and len(recs) == 2

    src = Path(pvs)
    for what, kw in (
        ("no `hidden_size`", {"drop": "hidden_size"}),
        ("no `target`", {"drop": "target"}),
        ("every PV value NaN", {"nan": True}),
    ):
        bad = rewrite_pvset(src, work / f"pvs-{what.split()[-1].strip('`')}.safetensors", **kw)

        @case(
            f"5 `guard --pvs` a PV set with {what}",
            "KeyError traceback, exit 1" if "drop" in kw else "accepted",
            "exit 2, one line",
        )
        def _(bad=bad):
            r = guard_run(exe, adapter, str(bad), work / "ref.jsonl", work / "bad.out.jsonl")
            return r.show(), r.one_line_error()

        if kw.get("nan"):

            @case("5 `serve --pvs` the NaN PV set", "accepted", "exit 2, one line, no server")
            def _(bad=bad):
                r = cli(
                    exe,
                    "serve",
                    "--adapter",
                    adapter,
                    "--pvs",
                    str(bad),
                    "--port",
                    str(free_port()),
                    timeout=120,
                )
                return r.show(), r.one_line_error()

    @case("7d output mode, umask 022: `guard --output`", "0600", "0644")
    def _():
        return f"ref.out.jsonl {mode(work / 'ref.out.jsonl')}", mode(work / "ref.out.jsonl") == "644"


def service(exe: str, work: Path, adapter: str, pvs: str, triggers: list[str], var: str) -> None:
    """Defects 2, 3, 4, 6 through a real `lmsanitator serve` (default options)."""
    srv = Server(exe, adapter, pvs, work / "server.log")
    try:
        up = srv.wait_up()
        print(f"server up in {up:.1f} s on {srv.url}", file=sys.stderr, flush=True)
        _service_cases(srv, triggers, var)
    finally:
        srv.stop()  # every exit path; the SIGTERM case below has normally stopped it already


def service_worst_case(exe: str, work: Path, adapter: str, pvs: str, triggers: list[str]) -> None:
    """Defect 2's worst case on the service: a 1 MiB flagged input that no window unflags
    (`--t-match 0.55`, as in case 2a), so trigger removal runs until its budget is spent."""
    singles = [t for t in triggers if " " not in t]
    srv = Server(exe, adapter, pvs, work / "server-worst.log", "--t-match", "0.55")
    try:
        srv.wait_up()
        short = body_of("a good film with a sad ending")
        lat = [post(srv.url, short)[1] for _ in range(3)]
        text = no_window_clears(singles, MAX_BODY // 3)
        body = body_of(text.encode()[: MAX_BODY - 40].decode("ascii", "ignore"))
        r, s = post(srv.url, body)
        nr, ns = post(srv.url, short)
        base = statistics.median(lat)

        @case(
            "2f POST /predict: one 1 MiB input no window unflags (server `--t-match 0.55`), then a short one",
            "26 KB held the lock > 3 min; valid requests timed out",
            f"200 within the removal budget ({MAX_SECONDS:.0f} s) + 1 s, reason budget, rejected; "
            "the next request as fast as before it",
        )
        def _():
            x = r.json()["results"][0] if r.status_code == 200 else {}
            obs = (
                f"{len(body) / 1024:.0f} KiB: {show_http(r, s)}; flagged {x.get('flagged')}, resolved "
                f"{x.get('resolved')}, reason {x.get('reason')}, candidates {x.get('candidates')}, label "
                f"{x.get('label')}; next short request {ns:.2f} s (before: median {base:.2f} s, also "
                "flagged at this T)"
            )
            ok = (
                r.status_code == 200
                and s <= MAX_SECONDS + 1.0
                and x.get("reason") in ("budget", "no-window")
                and x.get("label") is None
                and nr.status_code == 200
                and ns <= max(1.5 * base, base + 0.25)
            )
            return obs, ok
    finally:
        srv.stop()


def _service_cases(srv: Server, triggers: list[str], var: str) -> None:
    url = srv.url
    valid = body_of("a good film with a sad ending")
    lat = []
    for _ in range(5):
        r, s = post(url, valid)
        r.raise_for_status()
        lat.append(s)
    base = statistics.median(lat)
    normal = max(3 * base, base + 0.25)

    @case("6r reference: 5 valid one-input requests", "-", "200; median latency is 'normal speed'")
    def _():
        return f"HTTP 200 x5, median {base:.3f} s (normal: <= {normal:.3f} s)", True

    def flagged_request(nbytes: int, name: str, before: str):
        text = text_of_bytes(var, nbytes)
        body = body_of(text)
        assert len(body) <= MAX_BODY, len(body)
        seen_busy = []
        done = threading.Event()

        def poll():
            while not done.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    seen_busy.append(httpx.get(f"{url}/health", timeout=2).json().get("busy"))
                time.sleep(0.05)

        th = threading.Thread(target=poll, daemon=True)
        th.start()
        try:
            r, s = post(url, body)
        finally:
            done.set()
            th.join()
        nr, ns = post(url, valid)

        @case(
            f"2{name} POST /predict: one flagged input, body {len(body) / 1024:.0f} KiB",
            before,
            f"200 within the removal budget ({MAX_SECONDS:.0f} s) + 1 s; record says how it ended",
        )
        def _():
            x = r.json()["results"][0] if r.status_code == 200 else {}
            obs = (
                f"{show_http(r, s)}; flagged {x.get('flagged')}, resolved {x.get('resolved')}, reason "
                f"{x.get('reason')}, candidates {x.get('candidates')}, truncated {x.get('truncated')}, "
                f"label {x.get('label')}; /health busy seen {any(seen_busy)} in {len(seen_busy)} polls"
            )
            return obs, r.status_code == 200 and x.get("flagged") and s <= MAX_SECONDS + 1.0

        @case(
            f"2{name}' the next valid request",
            "timed out (the lock was held 3+ min)",
            f"200 at normal speed (<= {normal:.3f} s)",
        )
        def _():
            return show_http(nr, ns), nr.status_code == 200 and ns <= normal

    flagged_request(26 * 1024, "c", "held the model lock > 3 min, SIGTERM ignored")
    flagged_request(MAX_BODY, "d", "(body limit; 26 KB already stalled it)")

    # a long batch: 64 flagged inputs of ~16 KiB (one request at the body limit)
    batch = body_of(*[text_of_bytes(var, 16_000) for _ in range(64)])
    assert len(batch) <= MAX_BODY, len(batch)
    res: dict = {}

    def long_batch():
        res["r"], res["s"] = post(url, batch, timeout=DEADLINE + 60)

    th = threading.Thread(target=long_batch, daemon=True)
    th.start()
    time.sleep(1.0)
    h = httpx.get(f"{url}/health", timeout=5).json()
    other, other_s = post(url, valid, timeout=QUEUE_WAIT + 30)
    th.join()

    @case(
        "2e POST a 64-input flagged batch (~1 MiB); meanwhile GET /health and a valid request",
        "/health said ok while valid requests timed out",
        f"batch: 200 or 504 within the deadline ({DEADLINE:.0f} s); /health busy; "
        "the other: 200 or 503 within the queue wait",
    )
    def _():
        r, s = res["r"], res["s"]
        sums = ""
        if r.status_code == 200:
            rec = r.json()["results"]
            sums = (
                f" ({sum(x['flagged'] for x in rec)} flagged, "
                f"{sum(x['label'] is None for x in rec)} rejected, "
                f"reasons {sorted({str(x.get('reason')) for x in rec})})"
            )
        obs = (
            f"batch {show_http(r, s)}{sums}; /health at 1 s: status {h.get('status')}, busy {h.get('busy')}; "
            f"other {show_http(other, other_s)}"
        )
        ok = (
            r.status_code in (200, 504)
            and s <= DEADLINE + 2
            and h.get("busy") is True
            and other.status_code in (200, 503)
            and other_s <= max(QUEUE_WAIT, s) + 2
        )
        return obs, ok

    body = body_of(*variant_texts(var))
    vr, vs = post(url, body)
    for i, nm in enumerate((f"`{var}` ... `{var.upper()}`", f"`{var}` ... `{var},`")):

        @case(
            f"3{'ab'[i]}s POST /predict (default reject): input with {nm}",
            "`best` answered with the trigger in (CLI); service default not safe",
            "flagged; never answered with the trigger left",
        )
        def _(i=i):
            if vr.status_code != 200:
                return show_http(vr, vs), False
            x = vr.json()["results"][i]
            left = has_variant(x.get("purged_text"), var)
            obs = (
                f"HTTP 200; flagged {x['flagged']}, resolved {x['resolved']}, reason {x.get('reason')}, "
                f"label {x['label']}, `{var}` left: {left}"
            )
            return obs, x["flagged"] and (x["label"] is None or (x["resolved"] and not left))

    for key, line in HOSTILE_JSON.items():
        b = line.encode() if key == "nested 100k" else f'{{"inputs": [{line}]}}'.encode()

        @case(
            f"4s POST /predict body: {key} ({len(b) / 1024:.0f} KiB)",
            "HTTP 500" + (" (RecursionError)" if key == "nested 100k" else ""),
            "400, one-line error",
        )
        def _(b=b):
            r, s = post(url, b)
            return show_http(r, s), one_line_error(r, 400)

    for ch in ("\u2028", "\u0085"):

        @case(f"4s POST /predict: raw U+{ord(ch):04X} inside a string", "(JSONL split)", "200")
        def _(ch=ch):
            r, s = post(url, body_of(f"a good{ch}film"))
            return show_http(r, s), r.status_code == 200

    @case("6a POST /predict with Content-Type text/plain", "accepted", "415, one line")
    def _():
        r, s = post(url, valid, ctype="text/plain")
        return show_http(r, s), one_line_error(r, 415)

    @case("6b POST /predict body over --max-body-bytes (1 MiB + 1)", "(413)", "413, one line")
    def _():
        r, s = post(url, b" " * (MAX_BODY + 1))
        return show_http(r, s), one_line_error(r, 413)

    @case(
        "6c OpenAPI: POST /predict request body and error answers",
        "no request body, no 400/413 (ST202/ST103)",
        "requestBody (application/json); 400, 413 (and 408, 415, 503, 504)",
    )
    def _():
        op = httpx.get(f"{url}/openapi.json", timeout=10).json()["paths"]["/predict"]["post"]
        has_body = "application/json" in op.get("requestBody", {}).get("content", {})
        codes = sorted(op.get("responses", {}))
        return f"requestBody {has_body}; responses {codes}", has_body and {
            "400",
            "413",
            "415",
            "408",
            "503",
            "504",
        } <= set(codes)

    n_slow = 200

    @case(
        f"6d {n_slow} slow connections (headers + 1 of 100 body bytes, then silence)",
        "all stay open indefinitely",
        f"every one answered 408 within --read-timeout ({READ_TIMEOUT:.0f} s) + 3 s; "
        "then a valid request 200",
    )
    def _():
        socks, got = [], {}
        sel = selectors.DefaultSelector()
        try:
            for _i in range(n_slow):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
                s.sendall(
                    b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100\r\n\r\n{"
                )
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ)
                socks.append(s)
            t0 = time.monotonic()
            while len(got) < n_slow and time.monotonic() - t0 < READ_TIMEOUT + 10:
                for key, _ev in sel.select(timeout=0.5):
                    s = key.fileobj
                    with contextlib.suppress(OSError):
                        data = s.recv(4096)
                        got[s.fileno()] = (
                            data.split(b"\r\n", 1)[0].decode(errors="replace"),
                            time.monotonic() - t0,
                        )
                    sel.unregister(s)
        finally:
            for s in socks:
                s.close()
            sel.close()
        n408 = sum(" 408 " in line for line, _ in got.values())
        last = max((t for _, t in got.values()), default=float("nan"))
        nr, ns = post(url, valid)
        obs = f"{n408}/{n_slow} got 408, last after {last:.1f} s; next valid {show_http(nr, ns)}"
        return obs, n408 == n_slow and last <= READ_TIMEOUT + 3 and nr.status_code == 200

    @case(
        "6e clients that disconnect mid-request (half a flagged 1 MiB body; a whole one; closed at once)",
        "traceback in the log",
        "server keeps serving; no traceback (checked in 6f)",
    )
    def _():
        body = body_of(text_of_bytes(var, MAX_BODY - 100))
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body[: len(body) // 2]
            )
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
        time.sleep(0.5)
        nr, ns = post(url, valid)
        return f"next valid {show_http(nr, ns)}", nr.status_code == 200

    # SIGTERM while a flagged batch runs
    def busy():
        with contextlib.suppress(httpx.HTTPError):
            post(url, batch, timeout=DEADLINE + 30)

    threading.Thread(target=busy, daemon=True).start()
    time.sleep(1.0)
    h2 = httpx.get(f"{url}/health", timeout=5).json()
    took = srv.terminate(grace=SHUTDOWN + 7)

    @case(
        "6g SIGTERM while a 64-input flagged batch runs",
        "not stopped (model lock held)",
        f"exits within --shutdown-timeout ({SHUTDOWN:.0f} s) + 2 s",
    )
    def _():
        t = "not within 10 s (SIGKILLed)" if took is None else f"{took:.2f} s"
        return (
            f"busy at SIGTERM: {h2.get('busy')}; exited in {t}, rc {srv.proc.returncode}",
            took is not None and took <= SHUTDOWN + 2,
        )

    srv._logf.flush()
    text = srv.log.read_text(errors="replace")

    @case(
        "6f server log after all of the above",
        "a traceback per disconnect and per 500",
        "no `Traceback`; one `-> 4xx: reason` line per rejected request (one 408 line per slow client)",
    )
    def _():
        counts = {
            c: len(re.findall(rf"-> {c}: ", text)) for c in ("400", "408", "413", "415", "500", "503", "504")
        }
        obs = f"Traceback: {text.count('Traceback')}; lines by status {counts}"
        ok = (
            "Traceback" not in text
            and counts["500"] == 0
            and counts["408"] >= n_slow
            and counts["400"] >= 3
            and counts["415"] >= 1
            and counts["413"] >= 1
        )
        return obs, ok


# ============================================================================ main
def table() -> str:
    out = ["| case | before (issue 20) | intended | observed | ok |", "|---|---|---|---|---|"]
    for c, b, i, o, ok, counted in ROWS:
        mark = ("yes" if ok else "**NO**") if counted else f"extra probe: {'yes' if ok else '**no**'}"
        out.append(f"| {c} | {b} | {i} | {o} | {mark} |")
    counted = [r for r in ROWS if r[5]]
    out.append("")
    out.append(
        f"{sum(r[4] for r in counted)}/{len(counted)} reproductions ok; "
        f"{len(ROWS) - len(counted)} extra probes"
    )
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--adapter", required=True, help="tuned model on a backdoored encoder (e.g. /tmp/g20/victim)"
    )
    ap.add_argument(
        "--pvs", required=True, help="its PV set from `lmsanitator search` (e.g. /tmp/g20/pvs.safetensors)"
    )
    ap.add_argument(
        "--attack-json",
        required=True,
        help="the attack's attack.json, for trigger words (e.g. /tmp/g20/por/attack.json)",
    )
    ap.add_argument("--exe", default=str(REPO / ".venv" / "bin" / "lmsanitator"))
    ap.add_argument("--ro-dir", help="a folder this user cannot create files in (default: probed under /sys)")
    ap.add_argument("--workdir", help="scratch folder (default: a new temporary one, removed at the end)")
    ap.add_argument(
        "--only", choices=["cli", "guard", "service"], action="append", help="run only these groups"
    )
    a = ap.parse_args(argv)

    triggers = json.loads(Path(a.attack_json).read_text())["triggers"]
    singles = [t for t in triggers if " " not in t]
    if not singles:
        ap.error("the attack has no single-word trigger")
    var = singles[1] if len(singles) > 1 else singles[0]  # mn on the example (the issue's case)
    ro = Path(a.ro_dir) if a.ro_dir else unwritable_dir()
    groups = a.only or ["cli", "guard", "service"]

    # a SIGTERM / Ctrl-C of this script still runs every `finally` (the server is stopped there)
    def on_signal(sig, _frame):
        raise SystemExit(128 + sig)

    signal.signal(signal.SIGTERM, on_signal)
    with contextlib.ExitStack() as stack:
        if a.workdir:
            work = Path(a.workdir)
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hostile-")))
        print(f"work {work}, unwritable folder {ro}, variant trigger {var!r}", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        if "cli" in groups:
            d = work / "cli"
            d.mkdir(exist_ok=True)
            cli_contract(a.exe, d, ro, a.adapter, a.pvs)
        if "guard" in groups:
            d = work / "guard"
            d.mkdir(exist_ok=True)
            guard_cli(a.exe, d, a.adapter, a.pvs, triggers, var)
        if "service" in groups:
            d = work / "service"
            d.mkdir(exist_ok=True)
            service(a.exe, d, a.adapter, a.pvs, triggers, var)
            service_worst_case(a.exe, d, a.adapter, a.pvs, triggers)
        print(table())
        print(f"\n({time.monotonic() - t0:.0f} s)")
    return 0 if ROWS and all(r[4] for r in ROWS if r[5]) else 1


if __name__ == "__main__":
    sys.exit(main())
