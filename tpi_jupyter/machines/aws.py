"""The AWS machine: ONE EC2 instance from a launch template, with its own key pair and a
security group that lets tcp/22 in from the stated range only (`--ssh-from` or
`TPI_AWS_SSH_CIDR`; 0.0.0.0/0 only when written out). Stop/start keep its disk.

Checks (credentials, region, instance type, default VPC, image, permission_set) are the task
backend's own pre-flight; every resource carries the task tags (`tpi-task`, `tpi-creator`, the
user's) so `tpi sweep aws` sees them too.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backends.aws.common import AwsState, Clients, base_name, code, describe, not_found, tag_list
from ..backends.aws.group import fixed_price
from ..backends.aws.preflight import preflight
from ..backends.kit.steps import Steps
from ..backends.kit.tags import CREATOR
from .driver import MachineSpec, SshTarget, Status, ssh_range
from .keys import new_key
from .registry import files_dir, remove_files

SSH_ENV = "TPI_AWS_SSH_CIDR"
MACHINE_TAG = "tpi-machine"
RUNNING = ("pending", "running")
STOPPED = ("stopping", "stopped")


@dataclass
class AwsMachineState(AwsState):
    """What the task backend looks up (pre-flight fills it as for a task), plus the one instance."""

    instance: str = ""


class AwsMachineDriver:
    name = "aws"
    state_type = AwsMachineState
    stop_verb = "stop"
    release_command = "shutdown -h now || sudo shutdown -h now"  # the template terminates runners on shutdown
    DEPENDENCY_WAIT = 600.0  # a security group stays in use until the instance's interface goes
    POLL = 5.0

    def __init__(self) -> None:
        self.clients = Clients()

    def new_state(self, spec: MachineSpec) -> AwsMachineState:
        return AwsMachineState(name=base_name(spec.id))

    def plan(self, spec: MachineSpec) -> list[str]:
        return [f"key pair and security group {base_name(spec.id)} (tcp/22 from {spec.ssh_from or SSH_ENV})",
                f"launch template and one {spec.task.native_machine} instance in {spec.task.native_region}"]  # fmt: skip

    def _tags(self, spec: MachineSpec, state: AwsMachineState) -> dict[str, str]:
        """The user's tags, the creator, and `tpi-machine` (not `tpi-task`: a task sweep must never
        take a live machine for the leftovers of a gone task)."""
        return {**spec.task.tags, **spec.labels, MACHINE_TAG: spec.id, CREATOR: state.creator,
                "Name": state.name, "tpi-kind": spec.kind}  # fmt: skip

    def create(self, spec: MachineSpec, state: AwsMachineState, steps: Steps) -> None:
        state.ssh_from = ssh_range(spec, SSH_ENV)  # refused before any call
        preflight(self.clients, spec.task, state)
        tags = self._tags(spec, state)
        steps.explain = describe
        ec2 = self.clients("ec2", state.region)
        steps.together({"key pair": lambda: self._key_pair(ec2, spec, state, tags),
                        "security group": lambda: self._security_group(ec2, spec, state, tags)})  # fmt: skip
        steps.run("launch template", lambda: self._template(ec2, spec, state, tags))
        steps.run("instance", lambda: self._instance(ec2, state))

    def _key_pair(self, ec2: Any, spec: MachineSpec, state: AwsMachineState, tags: dict[str, str]) -> None:
        state.key_file = str(files_dir(spec.id) / "id_ed25519")
        public = new_key(Path(state.key_file), f"tpi-machine {spec.id}")
        ec2.import_key_pair(KeyName=state.name, PublicKeyMaterial=public.encode(),
                            TagSpecifications=[{"ResourceType": "key-pair", "Tags": tag_list(tags)}])  # fmt: skip
        state.key_name = state.name

    def _security_group(
        self, ec2: Any, spec: MachineSpec, state: AwsMachineState, tags: dict[str, str]
    ) -> None:
        state.security_group = ec2.create_security_group(
            GroupName=state.name, VpcId=state.vpc, Description=f"tpi-jupyter machine {spec.id}: ssh only",
            TagSpecifications=[{"ResourceType": "security-group", "Tags": tag_list(tags)}])["GroupId"]  # fmt: skip
        ec2.authorize_security_group_ingress(GroupId=state.security_group, IpPermissions=[{
            "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
            "IpRanges": [{"CidrIp": state.ssh_from, "Description": "ssh to the machine"}]}])  # fmt: skip

    def _template(self, ec2: Any, spec: MachineSpec, state: AwsMachineState, tags: dict[str, str]) -> None:
        runner = spec.kind == "runner"
        data: dict[str, Any] = {
            "ImageId": state.image, "InstanceType": state.instance_type, "KeyName": state.key_name,
            "SecurityGroupIds": [state.security_group],
            # a runner that ends powers off and stops costing; a machine keeps its disk
            "InstanceInitiatedShutdownBehavior": "terminate" if runner else "stop",
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1},
            "TagSpecifications": [{"ResourceType": kind, "Tags": tag_list(tags)} for kind in ("instance", "volume")],
        }  # fmt: skip
        if spec.startup_script:
            data["UserData"] = base64.b64encode(spec.startup_script.encode()).decode()
        if spec.task.permission_set:
            data["IamInstanceProfile"] = {"Arn": spec.task.permission_set}
        if spec.task.disk_size > 0:
            data["BlockDeviceMappings"] = [{"DeviceName": state.root_device, "Ebs": {
                "VolumeSize": spec.task.disk_size, "VolumeType": "gp3", "DeleteOnTermination": True, "Encrypted": True}}]  # fmt: skip
        if spec.task.spot >= 0:  # a persistent request keeps a stopped spot machine; a runner's is one-time
            options: dict[str, Any] = {"SpotInstanceType": "one-time" if runner else "persistent",
                                       "InstanceInterruptionBehavior": "terminate" if runner else "stop"}  # fmt: skip
            if spec.task.spot > 0:
                options["MaxPrice"] = fixed_price(spec.task.spot)
            data["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": options}
        state.launch_template = ec2.create_launch_template(
            LaunchTemplateName=state.name, LaunchTemplateData=data, VersionDescription=f"tpi-jupyter machine {spec.id}",
            TagSpecifications=[{"ResourceType": "launch-template", "Tags": tag_list(tags)}],
        )["LaunchTemplate"]["LaunchTemplateId"]  # fmt: skip

    def _instance(self, ec2: Any, state: AwsMachineState) -> None:
        found = ec2.run_instances(LaunchTemplate={"LaunchTemplateId": state.launch_template, "Version": "$Latest"},
                                  MinCount=1, MaxCount=1, SubnetId=state.subnets[0])  # fmt: skip
        state.instance = found["Instances"][0]["InstanceId"]

    def _describe(self, state: AwsMachineState) -> dict[str, Any] | None:
        if not state.instance:
            return None
        try:
            found = self.clients("ec2", state.region).describe_instances(InstanceIds=[state.instance])
        except Exception as error:
            if not_found(error):
                return None
            raise
        instances = [i for r in found["Reservations"] for i in r["Instances"]]
        return instances[0] if instances else None

    def read(self, spec: MachineSpec, state: AwsMachineState) -> Status:
        found = self._describe(state)
        phase = found["State"]["Name"] if found else "terminated"
        if phase in RUNNING:
            address = found.get("PublicIpAddress") or found.get("PrivateIpAddress", "") if found else ""
            return Status("running", address)
        if phase in STOPPED:
            return Status("stopped")
        return Status("released" if spec.kind == "runner" else "gone")

    def ssh(self, spec: MachineSpec, state: AwsMachineState) -> SshTarget:
        address = self.read(spec, state).address
        known = str(files_dir(spec.id) / "known_hosts")
        return SshTarget(state.user or "ubuntu", address, 22, state.key_file, known)

    def stop(self, spec: MachineSpec, state: AwsMachineState) -> None:
        self.clients("ec2", state.region).stop_instances(InstanceIds=[state.instance])

    def start(self, spec: MachineSpec, state: AwsMachineState) -> None:
        self.clients("ec2", state.region).start_instances(InstanceIds=[state.instance])

    def delete(self, spec: MachineSpec, state: AwsMachineState) -> None:
        """Instance, template, security group, key pair, key file; what is missing is deleted."""
        failures: list[str] = []
        for label, action in (("instance", self._terminate), ("launch template", self._delete_template),
                              ("security group", self._delete_group), ("key pair", self._delete_key)):  # fmt: skip
            if not state.region:
                break  # nothing in the cloud was made
            try:
                action(state)
            except Exception as error:
                if not not_found(error):
                    failures.append(f"{label}: {describe(error)}")
                    if label == "instance":
                        break  # it may still run: keep what lets it be found and reached
        if failures:
            raise RuntimeError(f"aws: {'; '.join(failures)}")
        remove_files(spec.id)

    def _terminate(self, state: AwsMachineState) -> None:
        if state.instance:
            self.clients("ec2", state.region).terminate_instances(InstanceIds=[state.instance])

    def _delete_template(self, state: AwsMachineState) -> None:
        if state.launch_template:
            self.clients("ec2", state.region).delete_launch_template(LaunchTemplateId=state.launch_template)

    def _delete_group(self, state: AwsMachineState) -> None:
        """The terminated instance's interface holds the group for a while: retry until the wait."""
        if not state.security_group:
            return
        limit = time.monotonic() + self.DEPENDENCY_WAIT
        while True:
            try:
                self.clients("ec2", state.region).delete_security_group(GroupId=state.security_group)
                return
            except Exception as error:
                if code(error) != "DependencyViolation" or time.monotonic() > limit:
                    raise
                time.sleep(self.POLL)

    def _delete_key(self, state: AwsMachineState) -> None:
        if state.key_name:
            self.clients("ec2", state.region).delete_key_pair(KeyName=state.key_name)
