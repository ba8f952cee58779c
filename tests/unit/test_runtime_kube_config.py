"""The client's configuration comes from the official package's loaders, imported without its generated API and
models. Each case runs in a fresh interpreter: what is imported is the point."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def write_kubeconfig(path: Path, cluster: dict, user: dict) -> Path:
    """A one-context kubeconfig for the server https://10.1.2.3:6443 with these cluster and user fields."""
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://10.1.2.3:6443", **cluster}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u", "namespace": "n"}}],
    }))
    return path


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Path:
    return write_kubeconfig(tmp_path / "kubeconfig",
                            {"certificate-authority-data": base64.b64encode(CA.encode()).decode()}, {"token": "t0k3n"})


def run(program: str) -> dict:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(program)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_loaded_without_the_models_and_the_real_package_still_imports(kubeconfig: Path) -> None:
    got = run(f"""
        import json, sys
        from pathlib import Path
        from rayop.runtime.kube import KubeClient
        client = KubeClient.load({str(kubeconfig)!r})
        c = client.configuration
        first = {{"host": c.host, "auth": c.auth_settings().get("BearerToken", {{}}).get("value"),
                 "ca": Path(c.ssl_ca_cert).read_text(),
                 "models": sorted(m for m in sys.modules if m.startswith("kubernetes.client.models"))[:3],
                 "package": "kubernetes" in sys.modules}}
        import kubernetes
        from kubernetes import client as k8s_client, config as k8s_config
        first["same_class"] = type(c) is k8s_client.Configuration
        first["same_loaders"] = k8s_config.load_kube_config is sys.modules["kubernetes.config"].load_kube_config
        first["real_package"] = hasattr(kubernetes, "__version__") and hasattr(k8s_client, "V1Pod")
        # what the kubeconfig loader builds to refresh an OIDC token is the real ApiClient
        api = sys.modules["kubernetes.config.kube_config"].ApiClient(configuration=c)
        first["api_client"] = type(api) is k8s_client.ApiClient
        print(json.dumps(first))
    """)
    assert got["host"] == "https://10.1.2.3:6443"
    assert got["auth"] == "Bearer t0k3n"
    assert got["ca"] == CA
    assert got["models"] == []  # none of the generated models was imported
    assert got["package"] is False  # no half-made package left behind
    assert got["same_class"] and got["same_loaders"] and got["real_package"] and got["api_client"]


def test_the_package_imported_first_is_used_as_it_is(kubeconfig: Path) -> None:
    got = run(f"""
        import json
        from kubernetes import client as k8s_client
        from rayop.runtime.kube import KubeClient
        c = KubeClient.load({str(kubeconfig)!r}).configuration
        print(json.dumps({{"host": c.host, "same_class": type(c) is k8s_client.Configuration}}))
    """)
    assert got == {"host": "https://10.1.2.3:6443", "same_class": True}


def test_an_exec_credential_plugin_gives_the_token(tmp_path: Path) -> None:
    # A kubeconfig whose user runs a credential plugin (as cloud providers' kubeconfigs do): the loader runs it and
    # the token it prints is the one the client sends, with the models still not imported.
    plugin = tmp_path / "plugin.py"
    plugin.write_text('import json\nprint(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", '
                      '"kind": "ExecCredential", "status": {"token": "from-exec"}}))\n')
    path = write_kubeconfig(tmp_path / "kubeconfig", {"insecure-skip-tls-verify": True},
                            {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
                                      "args": [str(plugin)], "interactiveMode": "Never"}})
    got = run(f"""
        import json, sys
        from rayop.runtime.kube import KubeClient
        client = KubeClient.load({str(path)!r})
        print(json.dumps({{"auth": client._headers(None).get("Authorization"),
                          "models": [m for m in sys.modules if m.startswith("kubernetes.client.models")][:3]}}))
    """)
    assert got == {"auth": "Bearer from-exec", "models": []}
