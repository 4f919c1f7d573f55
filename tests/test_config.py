"""dfs.toml and `dfs init`: a node's settings kept in its data dir, flags over them."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted.config import ConfigError, parse_config, render_config, resolve_paths
from dfs_twisted.launcher import BIN, NodeProcess, free_port
from dfs_twisted.options import NodeOptions, PeerAddress


def parse(*args: str) -> NodeOptions:
    options = NodeOptions()
    options.parseOptions(list(args))
    return options


def dfs(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "dfs"), *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


@pytest.mark.unit
class ConfigFileTests(SynchronousTestCase):
    def test_parse_as_flag_text(self) -> None:
        settings = parse_config(
            'port = 3000\npeers = ["4000", "host:5000"]\norg = "acme"\nquota = "20G"\n'
            "handshake-timeout = 12.5\nno-relay = true\n",
            "dfs.toml",
        )
        self.assertEqual(
            settings,
            {
                "port": "3000",
                "peers": ["4000", "host:5000"],
                "org": "acme",
                "quota": "20G",
                "handshake-timeout": "12.5",
                "no-relay": True,
            },
        )
        self.assertEqual(parse_config('peers = "4000, 5000"', "x")["peers"], ["4000", "5000"])

    def test_mistakes_name_the_file_and_the_setting(self) -> None:
        for text, needle in [
            ("port = ", "not valid TOML"),
            ("prot = 3000", "unknown setting 'prot'"),
            ("no-relay = 1", "no-relay must be true or false"),
            ("peers = 4000", "peers must be a list"),
            ("org = [1]", "org must be a string"),
            ("data-dir = 'x'", "unknown setting 'data-dir'"),
        ]:
            error = self.assertRaises(ConfigError, parse_config, text, "/d/dfs.toml")
            self.assertIn("/d/dfs.toml", str(error))
            self.assertIn(needle, str(error))

    @given(
        st.text(st.characters(blacklist_categories=["Cs"]), max_size=40),
        st.lists(st.text(st.characters(blacklist_categories=["Cs"]), max_size=10), max_size=3),
    )
    def test_render_reads_back(self, org: str, peers: list[str]) -> None:
        text = render_config({"port": "3000", "org": org, "peers": peers}, "a\ncomment")
        self.assertEqual(tomllib.loads(text), {"port": 3000, "org": org, "peers": peers})

    def test_relative_paths_are_relative_to_the_data_dir(self) -> None:
        settings = {"network-key": "net.key", "allow": "/etc/dfs/allow", "org": "x"}
        resolved = resolve_paths(settings, Path("/var/lib/dfs"))
        self.assertEqual(resolved["network-key"], "/var/lib/dfs/net.key")
        self.assertEqual(resolved["allow"], "/etc/dfs/allow")
        self.assertEqual(resolved["org"], "x")


@pytest.mark.unit
class OptionsWithConfigTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dfs-config-"))
        self.addCleanup(shutil.rmtree, self.dir, True)

    def write(self, text: str) -> Path:
        (self.dir / "dfs.toml").write_text(text)
        return self.dir

    def test_data_dir_alone_reads_its_settings(self) -> None:
        key = self.dir / "net.key"
        key.write_text("dfs-network-key-v1\n" + "ab" * 32 + "\n")
        node = self.write(
            'port = 7000\npeers = ["4000"]\norg = "globex"\nlisten = "0.0.0.0"\n'
            'network-key = "net.key"\nquota = "2G"\n'
        )
        options = parse("--data-dir", str(node))
        self.assertEqual(options["port"], 7000)
        self.assertEqual(options["peers"], [PeerAddress("127.0.0.1", 4000)])
        self.assertEqual(options["org"], "globex")
        self.assertEqual(options["quota"], 2 << 30)
        self.assertFalse(options["admission"].is_open)

    def test_flags_override_the_file(self) -> None:
        node = self.write('port = 7000\npeers = ["4000"]\norg = "globex"\nquota = "2G"\n')
        options = parse("--data-dir", str(node), "--port", "7001", "--org", "other", "--peers", "")
        self.assertEqual((options["port"], options["org"], options["peers"]), (7001, "other", []))
        self.assertEqual(options["quota"], 2 << 30)  # not given: from the file

    def test_bad_settings_are_usage_errors(self) -> None:
        node = self.write('port = 7000\nquota = "lots"\n')
        self.assertIn(
            "--quota", str(self.assertRaises(usage.UsageError, parse, "--data-dir", str(node)))
        )
        self.write("port = 'x'\n")
        self.assertRaises(usage.UsageError, parse, "--data-dir", str(node))
        self.write("nonsense = 1\n")
        error = self.assertRaises(usage.UsageError, parse, "--data-dir", str(node), "--port", "1")
        self.assertIn("unknown setting", str(error))

    def test_port_from_somewhere(self) -> None:
        error = self.assertRaises(usage.UsageError, parse, "--data-dir", str(self.dir))
        self.assertIn("--port is required", str(error))
        self.assertIn("dfs init", str(error))


@pytest.mark.processes
class InitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dfs-init-"))
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_init_then_start_with_the_data_dir_alone(self) -> None:
        node_dir = self.dir / "node"
        port = free_port()
        made = dfs("init", str(node_dir), "--port", str(port), "--org", "globex", "--json")
        self.assertEqual(made.returncode, 0, made.stderr)
        created = json.loads(made.stdout)
        self.assertEqual(created["org"], "globex")
        self.assertEqual((node_dir / "private").stat().st_mode & 0o777, 0o700)
        settings = tomllib.loads((node_dir / "dfs.toml").read_text())
        self.assertEqual(settings, {"port": port, "org": "globex"})

        # twistd -n dfs --data-dir DIR, nothing else.
        node = NodeProcess(port, node_dir)
        node.argv = lambda: [  # type: ignore[method-assign]
            str(BIN / "twistd"),
            "-n",
            "--pidfile=",
            f"--logfile={node.log_path}",
            "dfs",
            "--data-dir",
            str(node_dir),
            "--no-create",
        ]
        self.addCleanup(node.stop)
        node.start().wait_ready()
        status = node.status()
        self.assertEqual((status["org"], status["node_id"]), ("globex", created["node_id"]))

        again = dfs("init", str(node_dir), "--port", str(port))
        self.assertNotEqual(again.returncode, 0)
        self.assertIn("already holds a node", again.stderr)
        self.assertEqual(len(again.stderr.splitlines()), 1)

    def test_init_checks_its_settings_before_writing(self) -> None:
        for args, needle in [
            (["--port", "99999"], "port out of range"),
            (["--port", "3000", "--quota", "lots"], "--quota"),
            (["--port", "3000", "--reserve", "lots"], "--reserve"),
            (["--port", "3000", "--api", "tcp:9300"], "plain HTTP"),
            ([], "needs --port or --org"),
        ]:
            result = dfs("init", str(self.dir / "n"), *args)
            self.assertNotEqual(result.returncode, 0, args)
            self.assertIn(needle, result.stderr)
            self.assertTrue(result.stderr.startswith("dfs: "), result.stderr)
            self.assertFalse((self.dir / "n").exists(), args)

    def test_admission_is_checked_when_the_node_starts(self) -> None:
        # A service may hand the node its network key only at start (a credential).
        node_dir = self.dir / "wide"
        made = dfs("init", str(node_dir), "--port", str(free_port()), "--listen", "0.0.0.0")
        self.assertEqual(made.returncode, 0, made.stderr)
        started = subprocess.run(
            [str(BIN / "twistd"), "-n", "--pidfile=", "dfs", "--data-dir", str(node_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertNotEqual(started.returncode, 0)
        self.assertIn("--network-key FILE or --allow FILE", started.stderr)

    def test_org_name_lives_in_the_data_dir(self) -> None:
        # The command users know, on an empty directory, then again without --org.
        port = free_port()
        node = NodeProcess(port, self.dir / "plain", org="first-name")
        self.addCleanup(node.stop)
        node.start().wait_ready()
        node.stop()
        node.org = None
        node.start().wait_ready()
        self.assertEqual(node.status()["org"], "first-name")
        self.assertEqual(
            tomllib.loads((node.data_dir / "dfs.toml").read_text())["org"], "first-name"
        )
