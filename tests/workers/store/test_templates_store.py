"""The template store against real Postgres: append-only versions, sync of a directory,
and the ``llmfleet templates`` commands."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine

from schemas import TemplateError, TemplateNotFoundError, TemplateRenderError
from workers.cli.templates import templates_group
from workers.store import templates as store
from workers.store.engines import sync_engine


@pytest.fixture()
def engine(database_url: str) -> Engine:
    return sync_engine(database_url)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def test_versions_are_appended_and_never_rewritten(engine: Engine) -> None:
    # Given a template put once
    name = unique("greet")
    assert store.put(engine, name, "Hello {{ who }}", "chat") == 1
    # When the same body is put again, then a new body, then the first body again
    same = store.put(engine, name, "Hello {{ who }}")
    second = store.put(engine, name, "Hi {{ who }}")
    third = store.put(engine, name, "Hello {{ who }}")
    # Then only changes add versions, and version 1 still holds its text
    assert (same, second, third) == (1, 2, 3)
    assert store.get(engine, name, 1)["body"] == "Hello {{ who }}"
    assert store.get(engine, name, 2)["body"] == "Hi {{ who }}"
    latest = store.get(engine, name)
    assert latest["version"] == 3 and latest["category"] == "chat"  # category inherited


def test_a_missing_template_or_version_is_a_typed_error(engine: Engine) -> None:
    # Given one template at version 1
    name = unique("lonely")
    store.put(engine, name, "x")
    # When asking for a version or a name that does not exist
    # Then the error names them
    with pytest.raises(TemplateNotFoundError) as info:
        store.get(engine, name, 7)
    assert info.value.template == name and info.value.version == 7
    with pytest.raises(TemplateNotFoundError):
        store.get(engine, unique("nobody"))


def test_a_body_that_does_not_compile_is_refused(engine: Engine) -> None:
    # Given a body with a syntax error
    name = unique("broken")
    # When it is put, then nothing is stored
    with pytest.raises(TemplateRenderError) as info:
        store.put(engine, name, "{% if %}oops")
    assert info.value.template == name
    with pytest.raises(TemplateNotFoundError):
        store.get(engine, name)


def test_list_gives_the_latest_of_each_by_category(engine: Engine) -> None:
    # Given two templates of one category and one of another
    category = unique("cat")
    a, b, c = unique("a"), unique("b"), unique("c")
    store.put(engine, a, "a1", category)
    store.put(engine, a, "a2", category)
    store.put(engine, b, "b1", category)
    store.put(engine, c, "c1", unique("other"))
    # When listing the category
    rows = store.list_templates(engine, category)
    # Then each template appears once, at its latest version
    assert [(r["name"], r["version"]) for r in rows] == sorted([(a, 2), (b, 1)])


def test_sync_adds_versions_only_for_changed_files(engine: Engine, tmp_path: Path) -> None:
    # Given a directory of templates, one in a sub-folder
    first, second = unique("sync_a"), unique("sync_b")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / f"{first}.j2").write_text("Write {{ thing }}")
    (tmp_path / f"{second}.j2").write_text("Review {{ thing }}")
    (tmp_path / "notes.txt").write_text("not a template")
    # When it is synced twice, with one file changed in between
    initial = store.sync_dir(engine, tmp_path)
    again = store.sync_dir(engine, tmp_path)
    (tmp_path / "code" / f"{first}.j2").write_text("Write {{ thing }} carefully")
    changed = {r["name"]: r for r in store.sync_dir(engine, tmp_path)}
    # Then the first sync adds both, the second nothing, the third only the changed file
    assert {r["name"]: (r["version"], r["changed"]) for r in initial} == {
        first: (1, True), second: (1, True)}
    assert not any(r["changed"] for r in again)
    assert (changed[first]["version"], changed[first]["changed"]) == (2, True)
    assert (changed[second]["version"], changed[second]["changed"]) == (1, False)
    assert store.get(engine, first)["category"] == "code"
    assert store.get(engine, second)["category"] is None


def test_the_cli_syncs_shows_and_renders(database_url: str, redis_url: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the fleet's servers in the environment and a directory of one template
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("REDIS_URL", redis_url)
    name = unique("cli")
    (tmp_path / "ops").mkdir()
    (tmp_path / "ops" / f"{name}.j2").write_text("### system\nBe brief.\n### user\n{{ q }}")
    runner = CliRunner()
    # When it is synced, shown and rendered
    synced = runner.invoke(templates_group, ["sync", str(tmp_path), "--json"])
    shown = runner.invoke(templates_group, ["show", name])
    rendered = runner.invoke(templates_group, ["render", name, "--var", "q=why?"])
    missing = runner.invoke(templates_group, ["render", name])
    # Then each command answers, and a missing variable is named
    assert synced.exit_code == 0, synced.output
    assert json.loads(synced.output)[0]["category"] == "ops"
    assert shown.exit_code == 0 and "Be brief." in shown.output
    assert json.loads(rendered.output) == [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "why?"}]
    assert missing.exit_code != 0 and "'q'" in missing.output


def test_sync_refuses_two_files_of_one_name(engine: Engine, tmp_path: Path) -> None:
    # Given the same file name in two folders
    name = unique("twin")
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"{name}.j2").write_text(folder)
    # When synced / Then refused, and nothing is stored
    with pytest.raises(TemplateError, match=name):
        store.sync_dir(engine, tmp_path)
    with pytest.raises(TemplateNotFoundError):
        store.get(engine, name)
