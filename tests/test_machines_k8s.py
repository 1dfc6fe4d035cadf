"""Kubernetes machines: one pod, its startup script from a Secret, `kubectl exec` (issue 19).

The manifests are checked against the upstream schemas everywhere; the lifecycle runs on the
Kubernetes test bed (a real control plane; the kubelet is the bed's stand-in, which runs the
container's command as a local process and does not pull the image).
"""

from __future__ import annotations

import base64
from pathlib import Path

from tpi_jupyter.machines import registry
from tpi_jupyter.machines.driver import machine_spec
from tpi_jupyter.machines.k8s import K8sMachineDriver, K8sMachineState, manifests

from .conftest import wait_for
from .forge_contract import ForgeContract
from .k8s import bed
from .machine_words import destroy_all, tpi
from .test_k8s_pvc import cluster, needs_bed  # noqa: F401 - fixtures: a bed per module

SCRIPT = '#!/bin/bash\necho "started $TPI_MACHINE"\n'


def test_manifests_are_valid_and_keep_the_script_out_of_the_pod_spec() -> None:
    import kubernetes_validate

    spec = machine_spec(
        "kbox", ["cloud=k8s", "machine=2-4000", "spot=0", "tags=team=ml"], startup_script=SCRIPT
    )
    state = K8sMachineDriver().new_state(spec)
    state.namespace = "default"
    secret, pod = manifests(spec, state)
    for manifest in (secret, pod):
        kubernetes_validate.validate(manifest, "1.33.0", strict=True)
    assert base64.b64decode(secret["data"]["startup.sh"]).decode() == SCRIPT
    assert "started" not in str(pod)  # the script lives in the Secret, mounted read-only
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "4000M"}
    assert pod["spec"]["restartPolicy"] == "Never" and pod["metadata"]["labels"]["team"] == "ml"
    assert pod["spec"]["tolerations"]  # spot=0: the spot tolerations, as for tasks
    assert container["command"][-1].endswith("sleep infinity & wait")  # a machine stays up
    runner = machine_spec("krun", ["cloud=k8s"], startup_script=SCRIPT, kind="runner")
    assert manifests(runner, K8sMachineState(pod="p", secret="s"))[1]["spec"]["containers"][0]["command"][
        -1
    ] == (
        "exec bash /tpi/startup/startup.sh"  # a runner's pod ends with its runner
    )


@needs_bed
def test_a_pod_on_the_test_bed(cluster: bed.Bed, tpi_home: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # noqa: F811 - the imported fixture
    from kubernetes import client, config

    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    monkeypatch.setattr(K8sMachineDriver, "POLL", 0.2)
    script = tmp_path / "startup.sh"
    script.write_text(SCRIPT)
    try:
        code, out = tpi(
            capsys,
            "machine",
            "create",
            "kbox",
            "cloud=k8s",
            "machine=1-1000",
            "--startup-script",
            str(script),
        )
        assert code == 0, out
        api = client.CoreV1Api(config.new_client_from_config(config_file=str(cluster.kubeconfig)))
        state = registry.records()[0]["state"]
        wait_for(
            lambda: api.read_namespaced_pod(state["pod"], state["namespace"]).status.phase == "Running",
            timeout=60,
        )
        wait_for(
            lambda: "started tpi-kbox-" in api.read_namespaced_pod_log(state["pod"], state["namespace"]),
            timeout=60,
        )
        code, out = tpi(capsys, "machine", "ssh", "kbox")
        assert (
            code == 0
            and out.split()[:2] == ["kubectl", "--context"]
            and f"exec -it {state['pod']} -- /bin/bash -l" in out
        )
        code, out = tpi(capsys, "machine", "stop", "kbox")
        assert code == 2 and "stop: cloud=k8s machines cannot be stopped; accepted: destroy" in out
        assert "running" in tpi(capsys, "machine", "list")[1]
        code, out = tpi(capsys, "machine", "destroy", "kbox")
        assert code == 0, out
        names = [p.metadata.name for p in api.list_namespaced_pod(state["namespace"]).items]
        secrets = [s.metadata.name for s in api.list_namespaced_secret(state["namespace"]).items]
        assert state["pod"] not in names and state["secret"] not in secrets and registry.records() == []
        token = "glpat-REPOTOKENnever0in0pods"
        monkeypatch.setenv("REPO_TOKEN", token)
        with ForgeContract(token) as forge:
            code, out = tpi(capsys, "runner", "create", "--driver", "gitlab", "--repo", "https://gitlab.example.com/acme/ml/models",
                            "--api-url", forge.gitlab_api, "--labels", "gpu", "--name", "krun", "--stand-in", "cloud=k8s", "machine=1-1000")  # fmt: skip
            assert code == 0, out
            state = registry.records()[0]["state"]
            (runner,) = forge.runners.values()
            startup = base64.b64decode(
                api.read_namespaced_secret(state["secret"], state["namespace"]).data["startup.sh"]
            ).decode()
            pod = str(api.read_namespaced_pod(state["pod"], state["namespace"]).to_dict())
            assert runner.secret in startup and token not in startup  # the registration only, in the Secret
            assert runner.secret not in pod and token not in pod
            code, out = tpi(capsys, "runner", "destroy", "krun")
            assert code == 0 and "runner krun: unregistered" in out and forge.runners == {}
    finally:
        destroy_all()
