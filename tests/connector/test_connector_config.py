"""The connector file: loading, and errors that name the file, line and dotted path."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from lb.config.errors import ConfigError
from lb.connector import ConnectorConfig, IngressRule, load_connector_config
from lb.connector.ingress import HelloWorld, HttpStatus

GOOD = """\
tunnel: 6FF42AE2-765D-4ADF-8112-31C55C1551EF
replica: host-a
datacenter: FRA
listen: 127.0.0.1:18443
listen_http: "[::1]:18080"
certificate: certs/cert.pem
key: certs/key.pem
originRequest:
  noTLSVerify: true
  connectTimeout: 2.5
ingress:
  - hostname: app.example.com
    path: ^/api/
    service: http://127.0.0.1:8000
  - hostname: "*.example.com"
    service: hello_world
  - service: http_status:404
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "connector.yaml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(ConfigError) as info:
        load_connector_config(write(tmp_path, text))
    for p in info.value.problems:
        assert p.file.endswith("connector.yaml")
    return [(p.line, p.path, p.message) for p in info.value.problems]


def test_loads_a_good_file(tmp_path: Path) -> None:
    config = load_connector_config(write(tmp_path, GOOD))
    assert config.tunnel == "6ff42ae2-765d-4adf-8112-31c55c1551ef"  # R46: lowercase
    assert (config.replica, config.datacenter) == ("host-a", "FRA")
    assert config.listen_http == "[::1]:18080"
    assert config.no_tls_verify is True
    assert config.connect_timeout == 2.5
    assert config.certificate == str(tmp_path / "certs" / "cert.pem")  # relative to the file
    assert [r.hostname for r in config.ingress] == ["app.example.com", "*.example.com", None]
    assert isinstance(config.ingress[1].parsed_service, HelloWorld)
    assert config.ingress[2].parsed_service == HttpStatus(404)


def test_missing_catch_all_is_reported_at_the_last_rule(tmp_path: Path) -> None:
    text = GOOD.replace(
        "  - service: http_status:404\n", "  - hostname: x.org\n    service: http_status:404\n"
    )
    [(line, path, message)] = problems(tmp_path, text)
    assert path == "ingress[2]"
    assert line == 17
    assert "catch-all" in message


def test_every_problem_is_reported_with_its_path(tmp_path: Path) -> None:
    text = """\
tunnel: not-a-uuid
listen: 127.0.0.1
colour: blue
originRequest:
  noTLSVerify: "yes"
ingress:
  - hostname: app.example.com:443
    service: http://127.0.0.1:8000
  - hostname: b.example.com
    path: "(["
    service: hello_world
  - hostname: c.example.com
    service: ftp://x
  - service: http_status:404
    weight: 3
"""
    found = {path: (line, message) for line, path, message in problems(tmp_path, text)}
    assert found["colour"][0] == 3
    assert "unknown field" in found["colour"][1]
    assert found["originRequest.noTLSVerify"] == (5, "expected a boolean, got 'yes'")
    assert found["ingress[0].hostname"][0] == 7
    assert "port" in found["ingress[0].hostname"][1]
    assert found["ingress[1].path"][0] == 10
    assert found["ingress[2].service"][0] == 13
    assert found["ingress[3].weight"][0] == 15


def test_files_that_cannot_be_loaded_are_problems_at_their_line(tmp_path: Path) -> None:
    """Loaded only when asked (the command does, as serving will): the problem names the
    connector file, the line and the field, not only the PEM file."""
    path = write(tmp_path, GOOD.replace("originRequest:\n", "originRequest:\n  caPool: ca.pem\n"))
    assert load_connector_config(path).ca_pool == str(tmp_path / "ca.pem")  # not read
    with pytest.raises(ConfigError) as info:
        load_connector_config(path, files=True)
    [problem] = info.value.problems
    cert = tmp_path / "certs" / "cert.pem"
    assert (problem.file, problem.line, problem.path) == (str(path), 6, "certificate")
    assert problem.message == f"{cert}: no such file or directory"
    (tmp_path / "certs").mkdir()
    issued = trustme.CA().issue_cert("app.example.com")
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(tmp_path / "certs" / "key.pem"))
    (tmp_path / "ca.pem").write_text("junk\n")
    with pytest.raises(ConfigError) as info:
        load_connector_config(path, files=True)
    [problem] = info.value.problems
    assert (problem.line, problem.path) == (9, "originRequest.caPool")
    assert problem.message.startswith(f"{tmp_path / 'ca.pem'}: no PEM certificate in it")


def test_field_checks_after_rules(tmp_path: Path) -> None:
    text = "tunnel: nope\nlisten: localhost\nkey: k.pem\ningress:\n  - service: hello_world\n"
    found = {path: line for line, path, _ in problems(tmp_path, text)}
    assert found == {"tunnel": 1, "listen": 2, "key": 3}


def test_early_catch_all_and_empty_ingress(tmp_path: Path) -> None:
    text = (
        "tunnel: 6ff42ae2-765d-4adf-8112-31c55c1551ef\n"
        "ingress:\n  - service: hello_world\n  - service: http_status:404\n"
    )
    [(line, path, message)] = problems(tmp_path, text)
    assert (line, path) == (3, "ingress[0]")
    assert "never be used" in message
    [(_, path, _)] = problems(
        tmp_path, "tunnel: 6ff42ae2-765d-4adf-8112-31c55c1551ef\ningress: []\n"
    )
    assert path == "ingress"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must be a mapping"),
        ("- a\n", "must be a mapping"),
        ("tunnel: [unclosed\n", "YAML syntax error"),
    ],
)
def test_not_a_connector_file(tmp_path: Path, text: str, message: str) -> None:
    [(_, _, found)] = problems(tmp_path, text)
    assert message in found


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_connector_config(tmp_path / "absent.yaml")
    assert str(tmp_path / "absent.yaml") in str(info.value)


def test_code_construction_validates() -> None:
    rules = (IngressRule("hello_world", "a.example.com"),)
    with pytest.raises(ValueError, match=r"tunnel: .*ingress\[0\]: the last rule"):
        ConnectorConfig(tunnel="nope", ingress=rules)
    ok = ConnectorConfig(
        tunnel="6ff42ae2-765d-4adf-8112-31c55c1551ef", ingress=[IngressRule("hello_world")]
    )
    assert ok.ingress == (IngressRule("hello_world"),)  # lists become tuples
    assert ok.listen == "127.0.0.1:0"


def test_command_check_and_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from lb.commands import connector

    parser = argparse.ArgumentParser()
    connector.add_arguments(parser)
    path = str(write(tmp_path, GOOD))
    # --check loads the certificate and key (tests/test_command_errors.py: when it cannot)
    (tmp_path / "certs").mkdir()
    issued = trustme.CA().issue_cert("app.example.com")
    issued.cert_chain_pems[0].write_to_path(str(tmp_path / "certs" / "cert.pem"))
    issued.private_key_pem.write_to_path(str(tmp_path / "certs" / "key.pem"))
    assert connector.run(parser.parse_args([path, "--check", "--replica", "host-b"])) == 0
    assert "ok (3 ingress rules)" in capsys.readouterr().out
    assert connector.run(parser.parse_args([path, "--check", "--listen", "nope"])) == 2
    assert "listen" in capsys.readouterr().err
    assert connector.NAME == "connector"
