"""policy suggest: denials in, the least grants out, each commented; never a protected path or a
masked store (issue 19, item 7). The host is invented: a dict of path -> kind."""

from __future__ import annotations

import yaml

from sandboxctl.policy.suggest import Host, render, suggest

HOME = "/home/ann"
WS = "/home/ann/proj"
FILES = {HOME: "dir", WS: "dir", f"{HOME}/.config": "dir", f"{HOME}/.config/tool": "dir",
         f"{HOME}/.config/tool/settings.json": "file", "/srv": "dir", "/srv/data": "dir", "/srv/data/in.csv": "file",
         "/usr/local/bin": "dir", f"{HOME}/.ssh": "dir", f"{HOME}/notes": "dir"}


def host(**kwargs) -> Host:
    protected = {f"{WS}/.git/hooks/pre-commit": "protected: .git/hooks", f"{HOME}/.bashrc": "protected: .bashrc"}
    return Host(home=HOME, workspace=WS, kind=lambda p: FILES.get(p, "missing"),
                denied=(f"{HOME}/.ssh", f"{HOME}/.aws"), protected=protected.get, **kwargs)


def file(op: str, path: str, rule: str = "outside the writable set (ro …)") -> dict:
    return {"event": "file", "op": op, "path": path, "decision": "deny", "rule": rule}


def net(host_: str, port: int, rule: str = "not in network.allow (not approved)") -> dict:
    return {"event": "net", "host": host_, "port": port, "decision": "deny", "rule": rule}


def run(*records: dict):
    result = suggest(list(records), host(), "default", "r1")
    text = render(result, host(), "default", "sandboxctl policy suggest --run r1")
    return result, text, yaml.safe_load(text)


def test_an_existing_file_is_granted_alone():
    _result, _text, data = run(file("write", f"{HOME}/.config/tool/settings.json"))
    assert data["filesystem"]["write"] == ["~/.config/tool/settings.json"]
    assert "create" not in data["filesystem"]


def test_one_new_file_in_home_is_the_file_made_before_the_run():
    _r, _t, data = run(file("create", f"{HOME}/.config/tool/cache.json"))
    assert data["filesystem"]["write"] == ["~/.config/tool/cache.json"]
    assert data["filesystem"]["create"] == [{"path": "~/.config/tool/cache.json", "kind": "file"}]


def test_several_new_files_in_one_directory_grant_the_directory():
    _r, _t, data = run(file("create", "/srv/data/a.out"), file("create", "/srv/data/b.out"),
                       file("write", "/srv/data/in.csv"))
    assert data["filesystem"]["write"] == ["/srv/data"]  # the file grant inside it adds nothing


def test_a_missing_directory_in_home_is_made_not_its_parent_opened():
    _r, _t, data = run(file("create", f"{HOME}/.local/share/tool/db.sqlite"))
    assert data["filesystem"]["write"] == ["~/.local"]
    assert data["filesystem"]["create"] == [{"path": "~/.local", "kind": "dir"}]


def test_hosts_and_ports_and_the_private_address_behind_a_name():
    _r, _t, data = run(net("pypi.org", 443), net("pypi.org", 443),
                       net("intranet.example", 8080, "private address 10.1.2.3 (private; allow_private: false)"),
                       net("::1", 9000, "private address ::1 (loopback; allow_private: false)"))
    assert data["network"]["allow"] == ["pypi.org:443", "intranet.example:8080", "10.1.2.3:8080", "[::1]:9000"]
    assert "allow_private" not in data["network"]  # never opened wholesale


def test_every_grant_names_the_denial_it_answers():
    _r, text, _d = run(net("pypi.org", 443), net("pypi.org", 443), file("write", f"{HOME}/.config/tool/settings.json"))
    lines = text.splitlines()
    grant = lines.index('    - "pypi.org:443"')
    assert lines[grant - 1] == "    # net: pypi.org:443 (not in network.allow (not approved)) (x2)"
    grant = lines.index('    - "~/.config/tool/settings.json"')
    assert lines[grant - 1].startswith("    # file: write /home/ann/.config/tool/settings.json (")


def test_never_a_protected_path_a_masked_store_a_system_dir_or_an_explicit_deny():
    result, text, data = run(
        file("create", f"{WS}/.git/hooks/pre-commit"),
        file("create", f"{HOME}/.ssh/authorized_keys",
             "outside the writable set (…); never approvable: filesystem.deny"),
        file("create", f"{HOME}/.bashrc"),
        file("create", "/usr/local/bin/planted"),
        file("create", f"{HOME}/planted"),  # directly in HOME: too broad to open, and HOME's own file is fine alone
        net("evil.example", 443, "network.deny: evil.example"),
        {"event": "syscall", "name": "ptrace", "decision": "deny", "rule": "would read and control other processes"},
    )
    assert data["filesystem"]["write"] == ["~/planted"]  # a single new file in HOME: that file only
    refused = "\n".join(result.refused.values())
    assert len(result.refused) == 6
    assert "protected path" in refused and "masked by filesystem.deny /home/ann/.ssh" in refused
    assert "system directory" in refused and "network.deny wins" in refused and "seccomp baseline" in refused
    assert "~/.ssh" not in str(data) and ".git/hooks" not in str(data.get("filesystem"))
    assert "# Not suggested, never granted by `policy suggest`:" in text


def test_comments_and_values_are_inert(tmp_path):
    evil = f"{HOME}/.config/tool/x\nextends: evil\x1b[2J.json"
    _r, text, data = run(file("create", evil), net("a.example", 443, "rule\nnetwork:\n  allow_private: true"))
    assert "\x1b" not in text
    assert data["extends"] == "default" and "allow_private" not in data.get("network", {})
    # no policy path holds a line break (or a wildcard): refused, and shown inert
    assert "filesystem" not in data and "x\\nextends: evil\\x1b[2J.json" in text.split("# Not suggested", 1)[1]
    quoted = f"{HOME}/.config/tool/x\"\r\x1b]0;t\x07: evil.json"
    _r, text, data = run(file("create", quoted))
    assert "\x1b" not in text and "\r" not in text
    assert data["filesystem"]["write"] == ["~/.config/tool/x\"\r\x1b]0;t\x07: evil.json"]  # a value, quoted whole


def test_nothing_to_grant_still_validates(tmp_path):
    from sandboxctl.policy.load import load_source, read_source

    _r, text, data = run(file("create", f"{HOME}/.bashrc"))
    assert "no grant to suggest" in text and data == {"version": 1, "name": "default-suggested",
                                                      "description": "default and the grants run r1 was denied",
                                                      "extends": "default"}
    path = tmp_path / "s.yaml"
    path.write_text(text)
    load_source(read_source(path))


def test_request_denials_wait_for_request_rules():
    result, text, _d = run({"event": "http", "host": "api.github.com", "method": "POST", "path": "/x",
                            "decision": "deny", "rule": "no request rule"})
    assert result.later and "network.inspect" in text and result.empty
