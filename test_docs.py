"""Docs that cannot rot: what the code offers and what docs/ says must be the same set.

Fast (no servers; each script's --help runs once, side by side). Checked both ways:

- every flag in the --help of kv_store_server.py, cluster_manager.py and example_client.py is
  in docs/CLUSTERING.md (the reference), every benchmark flag in benchmarks/README.md;
- every `--flag` named in README.md, docs/*.md and benchmarks/README.md exists in some
  script's --help (flags of other tools, such as redis-cli's, are listed in FOREIGN_FLAGS);
- every command class the server dispatches (kv_handler.COMMANDS) and every command name the
  two parsers accept is in the "Commands" section of docs/CLUSTERING.md;
- every error code the server can send (kv_protocol's code sets, and any code written as a
  literal in a server module) is a row of the "Error codes" table, marked definite or
  indefinite as kv_protocol says, and every row is a real code;
- every fenced block says what it is: ```sh runnable / ```python runnable (run by the test
  RUNNERS names, see test_docs_quickstart.py for the convention), ```sh benchmark (each line
  a benchmark script with flags its --help lists), ```sh pytest (test files that exist, -k
  words that name tests in them, variables the tests read), ```sh deploy (the three-machine
  recipe, which test_docs_deploy.py runs in namespaces), or a non-command (text, json, java,
  js); an unclosed fence shows up as an opening fence with no language.

A failure lists exactly what is missing, and where.
"""
from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import kv_registry  # noqa: E402
import kv_store_server  # noqa: F401  (registers every command handler in kv_handler.COMMANDS)
import kv_handler
import kv_protocol as P

ROOT = Path(__file__).resolve().parent
DOCS = ROOT / "docs"
REFERENCE = DOCS / "CLUSTERING.md"
BENCH_README = ROOT / "benchmarks" / "README.md"

MAIN_SCRIPTS = ("kv_store_server.py", "cluster_manager.py", "example_client.py")
BENCH_SCRIPTS = tuple(sorted(str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks").glob("benchmark_*.py")))
TEST_SCRIPTS = ("test_consensus_sim.py", "test_redis_diff.py")     # replay tools, in TESTING_GUIDE.md

# Flags the docs may name that belong to other programs, and which one.
FOREIGN_FLAGS = {
    "--stat": "redis-cli", "--latency": "redis-cli", "--raw": "redis-cli",
    "--durations": "pytest",
    "--appendonly": "redis-server", "--appendfsync": "redis-server", "--save": "redis-server",
    "--replicaof": "redis-server", "--gil": "py-spy", "--net": "unshare",
}
# Command classes that are not commands a client names: a parse failure, a command queued
# inside MULTI, and the class behind every data command (each data command is checked by name).
NOT_CLIENT_COMMANDS = {"Invalid", "Queued", "DataCommand", "Blocking"}   # the registry names these
# Class name -> the command word, where it is not the class name in upper case.
CLASS_WORDS = {"ClientCmd": "CLIENT", "ClusterCmd": "CLUSTER", "CommandCmd": "COMMAND",
               "ConfigGet": "CONFIG", "DbSize": "DBSIZE", "ReadOnly": "READONLY", "ReadWrite": "READWRITE"}
# Server modules scanned for error codes written as literals.
CLIENT_SIDE = {"kv_client.py", "kv_localcluster.py", "kv_chaos.py", "kv_linearizability.py", "kv_cli.py"}
# Codes written as literals in a server module that never reach a client, and why.
NOT_SENT = {"UNREACHABLE": "kv_store_server.py's --join loop: its own stand-in for a failed connection"}

_OPTION_LINE = re.compile(r"^  (-\S.*?)(?:  |$)")
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
_SHORT = re.compile(r"(?<![\w-])-[a-zA-Z](?![\w-])")


@functools.lru_cache(maxsize=None)
def help_texts() -> dict[str, str]:
    """{script: its --help}; every script runs at once."""
    procs = {s: subprocess.Popen([sys.executable, str(ROOT / s), "--help"], cwd=ROOT, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for s in MAIN_SCRIPTS + BENCH_SCRIPTS + TEST_SCRIPTS}
    out = {}
    for script, p in procs.items():
        try:
            text, err = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert p.returncode == 0, f"{script} --help exited {p.returncode}: {err}"
        out[script] = text
    return out


def _options(text: str, pattern: re.Pattern) -> set[str]:
    found = set()
    for line in text.splitlines():
        m = _OPTION_LINE.match(line)
        if m:
            found.update(pattern.findall(m.group(1)))
    return found


@functools.lru_cache(maxsize=None)
def help_flags() -> dict[str, frozenset[str]]:
    """{script: the long flags its --help lists}."""
    out = {}
    for script, text in help_texts().items():
        flags = _options(text, _FLAG) - {"--help"}
        assert flags, f"no options parsed from {script} --help"
        out[script] = frozenset(flags)
    return out


def help_options(script: str) -> frozenset[str]:
    """Every option of script's --help, short ones (-n) included."""
    return frozenset(_options(help_texts()[script], _FLAG) | _options(help_texts()[script], _SHORT))


def _mentions(text: str, flag: str) -> bool:
    return re.search(re.escape(flag) + r"(?![\w-])", text) is not None


def _section(text: str, heading: str) -> str:
    """The body of `## heading` up to the next level-2 heading (sub-sections included)."""
    m = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"docs/CLUSTERING.md has no '## {heading}' section"
    return m.group(1)


def doc_files() -> list[Path]:
    return [ROOT / "README.md", BENCH_README, *sorted(DOCS.glob("*.md"))]


def test_every_script_flag_is_in_the_reference():
    ref = REFERENCE.read_text()
    bench = BENCH_README.read_text()
    missing = []
    testing = (DOCS / "TESTING_GUIDE.md").read_text()
    for script, flags in help_flags().items():
        where, text = (("benchmarks/README.md", bench) if script.startswith("benchmarks/")
                       else ("docs/TESTING_GUIDE.md", testing) if script in TEST_SCRIPTS
                       else ("docs/CLUSTERING.md", ref))
        missing += [f"{script} {f}: not in {where}" for f in sorted(flags) if not _mentions(text, f)]
    assert not missing, "flags in --help that the docs do not name:\n" + "\n".join(missing)


def test_every_documented_flag_exists():
    known = set().union(*help_flags().values()) | {"--help"}
    wrong = []
    for path in doc_files():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for f in _FLAG.findall(line):
                if f not in known and f not in FOREIGN_FLAGS:
                    wrong.append(f"{path.relative_to(ROOT)}:{n}: {f} is no script's flag: {line.strip()[:100]}")
    assert not wrong, "flags the docs name that no --help lists:\n" + "\n".join(wrong)


def test_foreign_flags_are_not_our_own():
    """An allow-listed flag that a script gains must be checked like the others."""
    ours = set().union(*help_flags().values())
    clash = sorted(f for f in FOREIGN_FLAGS if f in ours)
    assert not clash, f"flags in FOREIGN_FLAGS that a script of ours now has: {clash}"


def command_words() -> dict[str, str]:
    """{command word: where it comes from} for everything a client can name."""
    words = {}
    for cls in kv_handler.COMMANDS:
        name = cls.__name__
        if name in NOT_CLIENT_COMMANDS:
            continue
        words[CLASS_WORDS.get(name, name.upper())] = f"kv_handler.COMMANDS[{name}]"
    for name in P._LINE_COMMANDS:
        words.setdefault(name.upper(), "kv_protocol line-protocol parser")
    for name in P._RESP_COMMANDS:
        words.setdefault(name.decode().upper(), "kv_protocol RESP parser")
    for name in kv_registry.SPECS:
        words.setdefault(name, "kv_registry.SPECS")
    return words


def test_not_client_commands_still_exist():
    names = {c.__name__ for c in kv_handler.COMMANDS}
    assert NOT_CLIENT_COMMANDS <= names, f"stale NOT_CLIENT_COMMANDS: {NOT_CLIENT_COMMANDS - names}"


def test_every_command_is_in_the_command_reference():
    section = _section(REFERENCE.read_text(), "Commands")
    missing = [f"{w} ({src}): not in docs/CLUSTERING.md '## Commands'"
               for w, src in sorted(command_words().items()) if not re.search(rf"\b{re.escape(w)}\b", section)]
    assert not missing, "commands the server accepts that the reference does not list:\n" + "\n".join(missing)


def server_codes() -> dict[str, str]:
    """{error code: where it is defined or sent} for every code a node can answer."""
    codes = {c: "kv_protocol.ERROR_CODES" for c in P.ERROR_CODES}
    pat = re.compile(r'(?:"code":\s*|CommandError\(\s*)"([A-Z][A-Z0-9_]+)"')
    for path in sorted(ROOT.glob("*.py")):
        if path.name.startswith("test_") or path.name in CLIENT_SIDE:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for code in pat.findall(line):
                if code not in NOT_SENT:
                    codes.setdefault(code, f"{path.name}:{n}")
    return codes


def error_table() -> dict[str, str]:
    """{code: its 'definite?' cell} from the Error codes table."""
    rows = {}
    for line in _section(REFERENCE.read_text(), "Error codes").splitlines():
        m = re.match(r"^\| `([A-Z][A-Z0-9_]+)` \|[^|]*\|([^|]*)\|", line)
        if m:
            rows[m.group(1)] = m.group(2).strip()
    return rows


def test_every_error_code_is_in_the_error_table():
    table = error_table()
    problems = []
    for code, src in sorted(server_codes().items()):
        if code not in P.ERROR_CODES:
            problems.append(f"{code} ({src}): not in kv_protocol.DEFINITE_CODES or INDEFINITE_CODES")
        cell = table.get(code)
        if cell is None:
            problems.append(f"{code} ({src}): no row in docs/CLUSTERING.md '## Error codes'")
        elif code in P.INDEFINITE_CODES and "indefinite" not in cell:
            problems.append(f"{code}: the table says {cell!r}, kv_protocol says indefinite")
        elif code in P.DEFINITE_CODES and not cell.startswith("definite"):
            problems.append(f"{code}: the table says {cell!r}, kv_protocol says definite")
    for code in sorted(set(table) - set(P.ERROR_CODES)):
        problems.append(f"{code}: a row in docs/CLUSTERING.md '## Error codes' but no such code in kv_protocol")
    assert not problems, "error codes and the docs disagree:\n" + "\n".join(problems)


def test_not_sent_codes_are_still_in_the_code():
    """NOT_SENT must not hide a code that disappeared or became a real one."""
    assert not set(NOT_SENT) & set(P.ERROR_CODES), "a NOT_SENT code is now a real error code"
    text = "".join(p.read_text() for p in ROOT.glob("kv_*.py"))
    assert all(f'"{c}"' in text for c in NOT_SENT), "stale NOT_SENT entries"


def test_every_module_is_in_the_architecture_guide_and_the_readme():
    """Each top-level module (not a test) is shown in ARCHITECTURE_VISUAL_GUIDE.md and listed in
    README.md's Files table."""
    guide = (DOCS / "ARCHITECTURE_VISUAL_GUIDE.md").read_text()
    readme = (ROOT / "README.md").read_text()
    missing = []
    for path in sorted(ROOT.glob("*.py")):
        if path.name.startswith("test_") or path.name in ("setup.py", "conftest.py"):
            continue
        if path.name not in guide:
            missing.append(f"{path.name}: not in docs/ARCHITECTURE_VISUAL_GUIDE.md")
        if f"`{path.name}`" not in readme:
            missing.append(f"{path.name}: not in README.md's Files table")
    assert not missing, "modules the docs do not show:\n" + "\n".join(missing)


def _choices(script: str, flag: str) -> set[str]:
    mod = __import__(script.removesuffix(".py"))
    for action in mod.build_parser()._actions:
        if flag in action.option_strings:
            return set(action.choices or ())
    raise AssertionError(f"{script} has no {flag}")


def test_every_action_and_demo_is_documented_and_real():
    """cluster_manager.py --action X and example_client.py --demo X: every choice is in
    docs/CLUSTERING.md, and every one the docs name exists."""
    ref = REFERENCE.read_text()
    problems = []
    for script, flag in (("cluster_manager.py", "--action"), ("example_client.py", "--demo")):
        real = _choices(script, flag)
        problems += [f"{script} {flag} {c}: not in docs/CLUSTERING.md" for c in sorted(real)
                     if not re.search(rf"`{re.escape(c)}`|{flag} {re.escape(c)}\b", ref)]
        for path in doc_files():
            for n, line in enumerate(path.read_text().splitlines(), 1):
                for c in re.findall(rf"{flag}[ =]([a-z][a-z-]*)", line):
                    if c not in real:
                        problems.append(f"{path.relative_to(ROOT)}:{n}: {flag} {c} does not exist")
    assert not problems, "actions and demos:\n" + "\n".join(problems)


def test_the_checks_can_fail():
    """The parsers above find what they look for (so an empty parse cannot pass silently)."""
    assert "--node-id" in help_flags()["kv_store_server.py"]
    assert {"SET", "GET", "SENTINEL", "CAS"} <= set(command_words())
    assert {"NOT_PRIMARY", "TIMEOUT"} <= set(error_table())
    assert not _mentions("use --hosts", "--host") and _mentions("use --host.", "--host")


# ------------------------------------------------------------------------------- fenced blocks
# Which test runs each document's runnable blocks.
RUNNERS = {"README.md": "test_docs_readme.py", "docs/QUICKSTART.md": "test_docs_quickstart.py",
           "docs/CLIENT_GUIDE.md": "test_docs_quickstart.py", "docs/TESTING_GUIDE.md": "test_docs_quickstart.py",
           "docs/CLUSTERING.md": "test_docs_clustering.py"}
# A block's kind: what its language must be, and why it is not run where it is not.
COMMAND_KINDS = {
    "runnable": "run in order by the test RUNNERS names",
    "benchmark": "a benchmark invocation (minutes): its flags are checked against the script's --help",
    "pytest": "a part of the test suite: files, -k words and variables checked here",
    "deploy": "needs three machines: test_docs_deploy.py runs the recipe in network namespaces",
}
NOT_COMMANDS = {"text", "json", "java", "js"}
_ENV_WORD = re.compile(r"[A-Z][A-Z0-9_]*=\S*")


def fenced_blocks(text: str) -> tuple[list[tuple[int, str, str]], list[str]]:
    """([(line number, info string, body)], problems): every opening fence must name its
    language, so a missing closing fence shows up as a bare one where a block should open."""
    blocks, problems, open_at, info, body = [], [], None, "", []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.startswith("```"):
            if open_at is not None:
                body.append(line)
            continue
        if open_at is None:
            info = line[3:].strip()
            if not info:
                problems.append(f"{n}: a fence with no language (output and diagrams: ```text); "
                                f"or the block before it is not closed")
            open_at, body = n, []
        elif line.strip() == "```":
            blocks.append((open_at, info, "\n".join(body)))
            open_at = None
        else:
            problems.append(f"{n}: a fence opens inside the block of line {open_at} (not closed?)")
    if open_at is not None:
        problems.append(f"{open_at}: this block is never closed")
    return blocks, problems


def doc_blocks():
    for path in doc_files():
        rel = str(path.relative_to(ROOT))
        blocks, problems = fenced_blocks(path.read_text())
        yield rel, blocks, problems


def command_lines(body: str):
    """The commands of a shell block (comments and blank lines skipped), with their comments."""
    for line in body.splitlines():
        line = line.removeprefix("$ ")
        if line.strip() and not line.lstrip().startswith("#"):
            yield line


def test_every_block_says_what_it_is():
    problems = []
    for rel, blocks, fence_problems in doc_blocks():
        problems += [f"{rel}:{p}" for p in fence_problems]
        for n, info, _ in blocks:
            lang, *tags = info.split()
            if lang in NOT_COMMANDS and not tags:
                continue
            if lang not in ("sh", "python"):
                problems.append(f"{rel}:{n}: ```{info}: commands are sh or python; "
                                f"other blocks one of {sorted(NOT_COMMANDS)}")
            elif len(tags) != 1 + (tags[1:] == ["background"]) or tags[0] not in COMMAND_KINDS or \
                    (tags[1:] and (lang, tags[0]) != ("sh", "runnable")):
                problems.append(f"{rel}:{n}: ```{info}: say whether it runs: ```{lang} runnable, or one of "
                                f"{', '.join(k for k in COMMAND_KINDS if k != 'runnable')} ({COMMAND_KINDS})")
            elif tags[0] == "runnable" and rel not in RUNNERS:
                problems.append(f"{rel}:{n}: a runnable block, but no test runs {rel}: add it to RUNNERS")
    assert not problems, "fenced blocks:\n" + "\n".join(problems)


def test_runners_run_their_documents():
    """Each document with runnable blocks is named by the test that runs it (and only those
    documents are in RUNNERS)."""
    problems = []
    runnable = {rel for rel, blocks, _ in doc_blocks() if any(" runnable" in f" {info}" for _, info, _ in blocks)}
    for rel, test in RUNNERS.items():
        if rel not in runnable:
            problems.append(f"{rel}: in RUNNERS but has no runnable block")
        if Path(rel).name not in (ROOT / test).read_text():
            problems.append(f"{rel}: {test} does not name it")
    assert not problems, "\n".join(problems)


def tagged_commands(kind: str, problems: list[str]):
    """(document, line, names of the variables it sets, its words after `python`) for every
    command of every ```sh <kind> block; a line that is not `[VAR=x ...] [sudo] python ...` is
    noted in problems instead."""
    for rel, blocks, _ in doc_blocks():
        for _, info, body in blocks:
            if info.split()[1:] != [kind]:
                continue
            for line in command_lines(body):
                words = shlex.split(line, comments=True)
                env = []
                while words and _ENV_WORD.fullmatch(words[0]):
                    env.append(words.pop(0).split("=", 1)[0])
                if words[:1] == ["sudo"]:
                    words = words[1:]
                if words[:1] != ["python"] or len(words) < 2:
                    problems.append(f"{rel}: not a python command: {line}")
                    continue
                yield rel, line, env, words[1:]


def test_benchmark_blocks_use_real_flags():
    problems = []
    seen = 0
    for rel, line, _, words in tagged_commands("benchmark", problems):
        script = words[0]
        if script not in BENCH_SCRIPTS:
            problems.append(f"{rel}: {script} is not a benchmark script ({', '.join(BENCH_SCRIPTS)}): {line}")
            continue
        seen += 1
        # flags on the line and in its comment ("# --reps 3 -n 50000": the defaults)
        for flag in set(_FLAG.findall(line)) | set(_SHORT.findall(line)):
            if flag not in help_options(script):
                problems.append(f"{rel}: {script} has no {flag}: {line}")
    assert seen >= 8 and not problems, "benchmark invocations:\n" + "\n".join(problems)


def _test_names(files: list[str]) -> str:
    """The function and class names of the files, one a line (what -k matches against)."""
    return "\n".join(name for f in files
                     for name in re.findall(r"^\s*(?:def|class) (\w+)", (ROOT / f).read_text(), re.M))


PYTEST_FLAGS = {"-k", "-s", "-v", "-q", "-x"}


def test_pytest_blocks_name_real_tests():
    problems = []
    seen = 0
    sources = "\n".join(p.read_text() for p in ROOT.glob("*.py"))
    for rel, line, env, words in tagged_commands("pytest", problems):
        seen += 1
        if words[:2] == ["-m", "pytest"]:
            args, allowed = words[2:], PYTEST_FLAGS
        elif words[0].startswith("test_") and words[0].endswith(".py"):
            args = words
            allowed = help_options(words[0]) if words[0] in TEST_SCRIPTS else {"-v"}   # unittest.main
        else:
            problems.append(f"{rel}: neither `python -m pytest` nor a test file: {line}")
            continue
        files = [a.split("::")[0] for a in args if a.split("::")[0].endswith(".py")]
        problems += [f"{rel}: no such test file {f}: {line}" for f in files if not (ROOT / f).is_file()]
        files = [f for f in files if (ROOT / f).is_file()] or [p.name for p in ROOT.glob("test_*.py")]
        for i, a in enumerate(args):
            if a.startswith("-") and a not in allowed:
                problems.append(f"{rel}: {a} is not an option here ({sorted(allowed)}): {line}")
            if a == "-k" and i + 1 < len(args):
                names = _test_names(files)
                for word in set(re.findall(r"\w+", args[i + 1])) - {"and", "or", "not"}:
                    if word.lower() not in names.lower():
                        problems.append(f"{rel}: -k {word} selects no test in {', '.join(files)}: {line}")
        for var in env + re.findall(r"\b([A-Z][A-Z0-9_]+)=", line.split("#", 1)[-1]):
            if f'"{var}"' not in sources:
                problems.append(f"{rel}: no test reads the variable {var}: {line}")
    assert seen >= 8 and not problems, "test-suite invocations:\n" + "\n".join(problems)


def test_block_checks_can_fail():
    blocks, problems = fenced_blocks("```text\na\n```\n```sh runnable\nls\n\n```\nx\n```\n")
    assert [b[1] for b in blocks] == ["text", "sh runnable"] and len(problems) == 2, problems
    assert list(command_lines("$ a  # c\n# only a comment\n\nout")) == ["a  # c", "out"]


# --------------------------------------------------------------------------- measured figures
# A measured figure: a number after median/p50/p99/max/min, a rate (ops/s, µs/op), a longest pause.
_MEASURED = re.compile(r"\b(median|p50|p99|max|min)\s+~?[\d.]+\d|\d[\d,.]*\s*(ops/s|µs/op)|longest pause [\w ]*?\d")
# Where it comes from: the date it was measured, or the result file it is in.
_SOURCE = re.compile(r"20\d\d-\d\d-\d\d|\w+\.json\b")


def undated_sections(text: str) -> list[str]:
    """The headings of the sections (any level, code blocks aside) that show a measured figure
    but neither a date nor a result file."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return [sec.splitlines()[0] if sec.strip() else "(top)" for sec in re.split(r"^(?=#{1,6} )", text, flags=re.M)
            if _MEASURED.search(sec) and not _SOURCE.search(sec)]


def test_measured_figures_say_when_and_where():
    """Every section that shows a measured figure dates it or names its result file (the
    command that measured it is named next to it by convention; checked by eye)."""
    problems = [f"{path.relative_to(ROOT)}: {heading}" for path in doc_files()
                for heading in undated_sections(path.read_text())]
    assert not problems, "sections with figures but no date or results file:\n" + "\n".join(problems)


def test_figure_check_can_fail():
    text = "# A\nmedian 0.10 s\n# B\nmedian 0.10 s (x.json)\n# C\n12,000 ops/s, 2026-11-29\n"
    assert undated_sections(text) == ["# A"]
    assert undated_sections("# D\nheartbeat 50 ms, the median over runs\n```text\np99 4 ms\n```\n") == []
