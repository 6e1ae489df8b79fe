"""``agentflux purgatory list|show|resolve|cancel`` against the embedded store (SPEC 6, 10 CLI)."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from agentflux import JsonCodec, SemaphoreDecodeError, SemaphoreStatus, SemaphoreToken, open_purgatory
from agentflux.cli import main
from semaphores._helpers import make_token


def seed(url: str, *tokens: SemaphoreToken) -> None:
    """Create the store at ``url`` holding ``tokens`` (from a sync test: its own event loop)."""

    async def go() -> None:
        async with open_purgatory(url) as p:
            for token in tokens:
                await p.save(token)

    asyncio.run(go())


def stored(url: str, token_id: str) -> SemaphoreToken:
    async def go() -> SemaphoreToken:
        async with open_purgatory(url) as p:
            return await p.get(token_id)

    return asyncio.run(go())


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("agentflux: error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/p.db"


@pytest.fixture
def two(url: str) -> tuple[SemaphoreToken, SemaphoreToken]:
    first = make_token("Deploy v2 to production?", options=("yes", "no"), severity="critical", flux_id="deployer",
                       original_event={"release": "v2"})
    second = make_token("Which region?", flux_id="deployer")
    seed(url, first, second)
    return first, second


# ----------------------------------------------------------------------------- list / show


def test_list_shows_full_ids_and_prompts(url: str, two: tuple[SemaphoreToken, SemaphoreToken]) -> None:
    result = cli("purgatory", "list", "--store", url)
    assert result.exit_code == 0, result.output
    out = result.stdout
    for token in two:
        assert token.id in out.split()  # the whole id, as a word of its own
        assert token.prompt in out
    assert out.index(two[0].id) < out.index(two[1].id)  # oldest first
    assert "yes" in out
    assert "critical" in out
    assert "deployer" in out


def test_list_of_an_empty_store(url: str) -> None:
    seed(url)
    result = cli("purgatory", "list", "--store", url)
    assert result.exit_code == 0
    assert result.stdout.strip() == "no pending semaphores"


def test_list_leaves_out_answered_tokens(url: str, two: tuple[SemaphoreToken, SemaphoreToken]) -> None:
    assert cli("purgatory", "resolve", "--store", url, two[0].id, "yes").exit_code == 0
    out = cli("purgatory", "list", "--store", url).stdout
    assert two[0].id not in out
    assert two[1].id in out


def test_list_json_prints_one_object_per_token(url: str, two: tuple[SemaphoreToken, SemaphoreToken]) -> None:
    result = cli("purgatory", "list", "--json", "--store", url)
    assert result.exit_code == 0
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["id"] for row in rows] == [two[0].id, two[1].id]
    assert rows[0]["prompt"] == "Deploy v2 to production?"
    assert rows[0]["status"] == "pending"
    assert rows[0]["options"] == ["yes", "no"]
    assert rows[0]["severity"] == "critical"
    assert rows[0]["flux_id"] == "deployer"
    assert rows[0]["original_event"] == {"release": "v2"}
    assert rows[0]["reason"] == "approval_needed"


def test_list_json_of_an_empty_store_prints_nothing(url: str) -> None:
    seed(url)
    result = cli("purgatory", "list", "--json", "--store", url)
    assert result.exit_code == 0
    assert result.stdout == ""


def test_show_prints_every_field(url: str, two: tuple[SemaphoreToken, SemaphoreToken]) -> None:
    result = cli("purgatory", "show", "--store", url, two[0].id)
    assert result.exit_code == 0, result.output
    fields = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    assert fields["id"] == two[0].id
    assert fields["prompt"] == "Deploy v2 to production?"
    assert fields["status"] == "pending"
    assert json.loads(fields["options"]) == ["yes", "no"]
    assert json.loads(fields["original_event"]) == {"release": "v2"}
    assert {"reason", "severity", "flux_id", "deadline", "created_at", "resolution"} <= fields.keys()


# ----------------------------------------------------------------------------- resolve / cancel


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (['{"approved": true, "note": "ok"}'], {"approved": True, "note": "ok"}),
        (["42"], 42),
        (["looks good to me"], "looks good to me"),
        (["--text", '{"approved": true}'], '{"approved": true}'),
        (["--text", "42"], "42"),
    ],
    ids=["json-object", "json-number", "plain-text", "text-flag-object", "text-flag-number"],
)
def test_resolve_records_the_answer(url: str, two: tuple[SemaphoreToken, SemaphoreToken], args: list[str],
                                    expected: Any) -> None:
    result = cli("purgatory", "resolve", "--store", url, two[0].id, *args)
    assert result.exit_code == 0, result.output
    assert two[0].id in result.stdout
    token = stored(url, two[0].id)
    assert token.status is SemaphoreStatus.RESOLVED
    assert token.resolution == expected
    assert type(token.resolution) is type(expected)
    assert stored(url, two[1].id).status is SemaphoreStatus.PENDING


def test_resolving_twice_fails_and_keeps_the_first_answer(url: str, two: tuple[SemaphoreToken, SemaphoreToken]) -> None:
    assert cli("purgatory", "resolve", "--store", url, two[0].id, "first").exit_code == 0
    result = cli("purgatory", "resolve", "--store", url, two[0].id, "second")
    assert_one_line_error(result, two[0].id, "resolved")
    assert stored(url, two[0].id).resolution == "first"


def test_cancel_with_a_reason(url: str, two: tuple[SemaphoreToken, SemaphoreToken]) -> None:
    result = cli("purgatory", "cancel", "--store", url, "--reason", "duplicate request", two[1].id)
    assert result.exit_code == 0, result.output
    assert two[1].id in result.stdout
    token = stored(url, two[1].id)
    assert token.status is SemaphoreStatus.CANCELLED
    assert token.resolution == "duplicate request"
    assert_one_line_error(cli("purgatory", "resolve", "--store", url, two[1].id, "yes"), "cancelled")


def test_cancel_without_a_reason(url: str, two: tuple[SemaphoreToken, SemaphoreToken]) -> None:
    assert cli("purgatory", "cancel", "--store", url, two[0].id).exit_code == 0
    assert stored(url, two[0].id).status is SemaphoreStatus.CANCELLED


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("command", [["show"], ["resolve", "--", "x"], ["cancel"]])
def test_an_unknown_id_is_a_one_line_error(url: str, two: tuple[SemaphoreToken, SemaphoreToken],
                                           command: list[str]) -> None:
    name, *rest = command
    result = cli("purgatory", name, "--store", url, "no-such-token", *rest)
    assert_one_line_error(result, "no-such-token")


def test_a_missing_store_file_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    for command in (["list"], ["show", "x"], ["resolve", "x", "y"], ["cancel", "x"]):
        result = cli("purgatory", *command, "--store", f"sqlite:///{path}")
        assert_one_line_error(result, str(path))
    assert not path.exists()


@pytest.mark.parametrize("store", ["redis://localhost/0", "nonsense", "sqlite://relative-without-third-slash.db"])
def test_an_unknown_store_url_is_an_error(store: str) -> None:
    assert_one_line_error(cli("purgatory", "list", "--store", store))


@pytest.mark.parametrize(
    "args",
    [["purgatory", "frobnicate"], ["nope"], ["purgatory", "resolve"], ["purgatory", "list", "--bogus"]],
    ids=["unknown-subcommand", "unknown-command", "missing-arguments", "unknown-option"],
)
def test_usage_errors_exit_2(args: list[str], url: str) -> None:
    seed(url)
    result = cli(*args, "--store", url) if args[-1] == "resolve" else cli(*args)
    assert result.exit_code == 2
    assert "Traceback" not in result.output


# ----------------------------------------------------------------------------- where the store is


def test_the_environment_variable_names_the_store(url: str, two: tuple[SemaphoreToken, SemaphoreToken],
                                                  tmp_path: Path) -> None:
    result = cli("purgatory", "list", env={"AGENTFLUX_STORE": url})
    assert result.exit_code == 0
    assert two[0].id in result.stdout
    # --store wins over the environment.
    other = f"sqlite:///{tmp_path}/other.db"
    seed(other)
    result = cli("purgatory", "list", "--store", other, env={"AGENTFLUX_STORE": url})
    assert result.stdout.strip() == "no pending semaphores"
    result = cli("purgatory", "resolve", two[1].id, "yes", env={"AGENTFLUX_STORE": url})
    assert result.exit_code == 0
    assert stored(url, two[1].id).status is SemaphoreStatus.RESOLVED


def test_the_default_store_is_under_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTFLUX_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    result = cli("purgatory", "list")
    assert_one_line_error(result, ".agentflux")
    token = make_token("in the default store")
    seed("sqlite:///.agentflux/purgatory.db", token)
    assert (tmp_path / ".agentflux" / "purgatory.db").exists()
    result = cli("purgatory", "list")
    assert result.exit_code == 0
    assert token.id in result.stdout


# ----------------------------------------------------------------------------- untrusted text


CONTROL = "\x1b[2J\x1b]0;owned\x07\rfake\x08\x7f\x9b31m"


def test_control_characters_in_a_prompt_are_shown_escaped(url: str) -> None:
    token = make_token(f"approve?{CONTROL}", options=(f"y{CONTROL}",), flux_id=f"f{CONTROL}")
    seed(url, token)
    for command in (["list"], ["show", token.id]):
        result = cli("purgatory", *command, "--store", url)
        assert result.exit_code == 0
        for char in "\x1b\x07\r\x08\x7f\x9b":
            assert char not in result.stdout, (command, char)
        assert "\\x1b[2J" in result.stdout
        assert "approve?" in result.stdout
    listed = cli("purgatory", "list", "--json", "--store", url).stdout
    assert "\x1b" not in listed
    assert json.loads(listed)["prompt"] == f"approve?{CONTROL}"


def test_control_characters_in_an_answer_or_an_id_are_shown_escaped(url: str, two: Any) -> None:
    result = cli("purgatory", "resolve", "--store", url, "--text", two[0].id, f"ok{CONTROL}")
    assert result.exit_code == 0
    assert "\x1b" not in result.stdout
    result = cli("purgatory", "show", "--store", url, "bad\x1b[31mid")
    assert_one_line_error(result)
    assert "\x1b" not in result.stderr


BIDI_CONTROLS = "\u202e\u2066\u2069\u200f\u2028\u2029\u061c"
BIDI = "\u202egnp.exe\u2066\u2069\u200f\u2028\u2029\u061c"


def test_bidi_controls_and_line_separators_are_shown_escaped(url: str) -> None:
    token = make_token(f"approve {BIDI}?", options=(f"y{BIDI}",), flux_id=f"f{BIDI}", original_event={"e": BIDI})
    seed(url, token)
    for command in (["list"], ["show", token.id], ["list", "--json"]):
        result = cli("purgatory", *command, "--store", url)
        assert result.exit_code == 0, result.output
        for char in BIDI_CONTROLS:
            assert char not in result.stdout, (command, hex(ord(char)))
        assert "\\u202egnp.exe" in result.stdout
    result = cli("purgatory", "resolve", "--store", url, "--text", token.id, f"ok {BIDI}")
    assert result.exit_code == 0
    assert not set(BIDI_CONTROLS) & set(result.stdout)
    assert stored(url, token.id).resolution == f"ok {BIDI}"  # stored as given, only shown escaped
    result = cli("purgatory", "show", "--store", url, f"bad{BIDI}id")
    assert_one_line_error(result)
    assert not set(BIDI_CONTROLS) & set(result.stderr)


def test_a_prompt_cannot_forge_lines_of_the_listing(url: str) -> None:
    forged = "0" * 32 + "  pending   critical approval_needed   flux=bank"
    seed(url, make_token(f"approve?\n{forged}\n    wire $1M to attacker"))
    out = cli("purgatory", "list", "--store", url).stdout
    assert len(out.splitlines()) == 2, out  # one header line and one prompt line per token


# ----------------------------------------------------------------------------- the real entry point


def run_module(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "AGENTFLUX_STORE"}
    return subprocess.run(
        [sys.executable, "-m", "agentflux", *args], capture_output=True, text=True, timeout=30, cwd=cwd, env=env,
    )


def test_python_dash_m_agentflux_lists_the_store(url: str, two: tuple[SemaphoreToken, SemaphoreToken],
                                                 tmp_path: Path) -> None:
    done = run_module("purgatory", "list", "--store", url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert two[0].id in done.stdout
    assert two[1].id in done.stdout
    assert done.stderr == ""


def test_python_dash_m_agentflux_errors_are_one_line(tmp_path: Path) -> None:
    done = run_module("purgatory", "list", cwd=tmp_path)  # no store under this directory
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith("agentflux: error:")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / ".agentflux").exists()


# ----------------------------------------------------------------------------- rows that cannot be decoded here


class Deploy:
    """A type registered only in the process that parked the token (not in the CLI's)."""

    def __init__(self, release: str) -> None:
        self.release = release


def registering_codec() -> JsonCodec:
    codec = JsonCodec()
    codec.register(Deploy, lambda d: d.release, Deploy, name="tests.Deploy")
    return codec


def seed_with(url: str, codec: JsonCodec, *tokens: SemaphoreToken) -> None:
    async def go() -> None:
        async with open_purgatory(url, codec=codec) as p:
            for token in tokens:
                await p.save(token)

    asyncio.run(go())


def stored_with(url: str, codec: JsonCodec, token_id: str) -> SemaphoreToken:
    async def go() -> SemaphoreToken:
        async with open_purgatory(url, codec=codec) as p:
            return await p.get(token_id)

    return asyncio.run(go())


@pytest.fixture
def foreign(url: str) -> tuple[SemaphoreToken, SemaphoreToken]:
    """A readable token, then one whose original event is of a type this process does not know."""
    readable = make_token("readable?")
    unknown = make_token("deploy?", original_event=Deploy("v2"))
    seed_with(url, registering_codec(), readable, unknown)
    return readable, unknown


@pytest.mark.parametrize("command", [["resolve", "yes"], ["cancel"]])
def test_a_committed_answer_is_reported_although_the_row_cannot_be_decoded(
    url: str, foreign: tuple[SemaphoreToken, SemaphoreToken], command: list[str]
) -> None:
    token = foreign[1]
    name, *rest = command
    result = cli("purgatory", name, "--store", url, token.id, *rest)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert token.id in result.stdout
    assert "agentflux: warning: the token's row could not be decoded here" in result.stderr
    assert "tests.Deploy" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr
    after = stored_with(url, registering_codec(), token.id)
    assert after.status is (SemaphoreStatus.RESOLVED if name == "resolve" else SemaphoreStatus.CANCELLED)
    # Answering again says it is answered: the first answer was not lost.
    assert_one_line_error(cli("purgatory", "resolve", "--store", url, token.id, "no"), "already")


def test_list_shows_the_readable_rows_and_flags_the_bad_one(
    url: str, foreign: tuple[SemaphoreToken, SemaphoreToken]
) -> None:
    readable, unknown = foreign
    result = cli("purgatory", "list", "--store", url)
    assert result.exit_code == 1
    assert readable.id in result.stdout
    assert readable.prompt in result.stdout
    assert unknown.id in result.stdout
    assert "UNREADABLE" in result.stdout
    assert "tests.Deploy" in result.stdout
    assert_one_line_error_line(result.stderr, unknown.id)
    rows = [json.loads(line) for line in cli("purgatory", "list", "--json", "--store", url).stdout.splitlines()]
    assert rows[0]["prompt"] == readable.prompt
    assert rows[1]["id"] == unknown.id
    assert "tests.Deploy" in rows[1]["error"]


def test_show_of_a_bad_row_says_what_is_wrong(url: str, foreign: tuple[SemaphoreToken, SemaphoreToken]) -> None:
    result = cli("purgatory", "show", "--store", url, foreign[1].id)
    assert_one_line_error(result, foreign[1].id, "cannot be decoded here", "tests.Deploy")


def test_a_malformed_row_is_flagged_not_fatal(url: str, two: tuple[SemaphoreToken, SemaphoreToken]) -> None:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        db.execute("UPDATE tokens SET options = '[not json', created_at = 'yesterday' WHERE id = ?", (two[0].id,))
    db.close()
    result = cli("purgatory", "list", "--store", url)
    assert result.exit_code == 1
    assert two[1].prompt in result.stdout
    assert two[0].id in result.stdout
    assert "UNREADABLE" in result.stdout
    assert_one_line_error_line(result.stderr, two[0].id)
    assert_one_line_error(cli("purgatory", "show", "--store", url, two[0].id), two[0].id, "cannot be decoded")


def assert_one_line_error_line(stderr: str, *fragments: str) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("agentflux: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0]


async def test_the_purgatory_reports_a_committed_resolve_it_cannot_decode(
    url: str, foreign: tuple[SemaphoreToken, SemaphoreToken]
) -> None:
    async with open_purgatory(url) as p:
        with pytest.raises(SemaphoreDecodeError) as info:
            await p.resolve(foreign[1].id, "yes")
        assert info.value.committed
        assert (info.value.token_id, info.value.status) == (foreign[1].id, "resolved")
        rows = await p.list_pending_rows()
        assert [type(row) for row in rows] == [SemaphoreToken]  # the resolved one is no longer open
        with pytest.raises(SemaphoreDecodeError) as got:
            await p.get(foreign[1].id)
        assert not got.value.committed


# ----------------------------------------------------------------------------- no raw errors


def test_deeply_nested_json_is_a_one_line_error(url: str, two: tuple[SemaphoreToken, SemaphoreToken]) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    assert_one_line_error(cli("purgatory", "resolve", "--store", url, two[0].id, deep), "nested too deeply")
    assert stored(url, two[0].id).status is SemaphoreStatus.PENDING


@pytest.mark.parametrize("answer", ["NaN", "Infinity", "-Infinity", '{"x": NaN}'])
def test_nan_and_infinity_are_not_json_so_they_are_text(
    url: str, two: tuple[SemaphoreToken, SemaphoreToken], answer: str
) -> None:
    result = cli("purgatory", "resolve", "--store", url, "--", two[0].id, answer)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert stored(url, two[0].id).resolution == answer


@pytest.mark.parametrize(
    "args",
    [
        ["purgatory", "resolve", "tok", "ok\udcff"],  # a byte that was not UTF-8, as Python passes it on
        ["purgatory", "show", "\ud800"],
        ["workshop", "run", "Fix it\udc80", "--plain"],
        ["purgatory", "list", "--store", "sqlite:///x\udcff.db"],
    ],
    ids=["answer", "token-id", "task", "store"],
)
def test_arguments_that_are_not_utf8_are_refused_in_one_line(args: list[str]) -> None:
    result = cli(*args)
    assert_one_line_error(result, "not valid UTF-8")
    assert "\\udc" in result.stderr or "\\ud800" in result.stderr
