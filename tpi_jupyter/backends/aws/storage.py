"""The task's S3 storage: a private, encrypted, tagged bucket, or a prefix of the user's."""

from __future__ import annotations

import secrets

from ... import layout
from ...spec import TaskSpec
from .common import AwsState, Clients, base_name, tag_list
from .preflight import split_container


def location(spec: TaskSpec, state: AwsState) -> tuple[str, str]:
    """(bucket, prefix) of the task's remote; the bucket name is drawn once and kept in state."""
    if state.bucket:
        return state.bucket, state.prefix
    if spec.container:
        bucket, prefix = split_container(spec.container)
        return bucket, layout.join(prefix, spec.id).strip("/")
    return f"{base_name(spec.id)}-<random>", spec.id


def choose(spec: TaskSpec, state: AwsState) -> None:
    """Fix the bucket and prefix before anything names them (role policy, boot script)."""
    if spec.container:
        state.bucket, state.prefix = location(spec, AwsState())
        state.user_bucket = True
    else:
        state.bucket, state.prefix = f"{base_name(spec.id)}-{secrets.token_hex(3)}", spec.id


def create_bucket(clients: Clients, spec: TaskSpec, state: AwsState, tags: dict[str, str]) -> None:
    if spec.container:
        return
    s3 = clients("s3", state.region)
    options = {} if state.region == "us-east-1" else {
        "CreateBucketConfiguration": {"LocationConstraint": state.region}}  # fmt: skip
    s3.create_bucket(Bucket=state.bucket, **options)
    state.bucket_created = True
    s3.put_public_access_block(Bucket=state.bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True})  # fmt: skip
    s3.put_bucket_encryption(Bucket=state.bucket, ServerSideEncryptionConfiguration={"Rules": [
        {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})  # fmt: skip
    s3.put_bucket_tagging(Bucket=state.bucket, Tagging={"TagSet": tag_list(tags)})


def put(clients: Clients, state: AwsState, key: str, data: bytes) -> str:
    """Upload data under the task's prefix (encrypted); returns the full key."""
    full = f"{state.prefix}/{key}"
    clients("s3", state.region).put_object(
        Bucket=state.bucket, Key=full, Body=data, ServerSideEncryption="AES256"
    )
    return full


def encrypt_env(clients: Clients, state: AwsState) -> None:
    """The user's bucket may lack default encryption: rewrite the environment file encrypted."""
    key = f"{state.prefix}/{layout.ENV}"
    clients("s3", state.region).copy_object(
        Bucket=state.bucket, Key=key, CopySource={"Bucket": state.bucket, "Key": key},
        ServerSideEncryption="AES256", MetadataDirective="REPLACE",
    )  # fmt: skip


def delete_storage(clients: Clients, state: AwsState) -> None:
    """Our bucket whole; in the user's container only the task's prefix."""
    if not state.bucket or not state.region or not (state.bucket_created or state.user_bucket):
        return
    s3 = clients("s3", state.region)
    prefix = "" if state.own_bucket else f"{state.prefix.strip('/')}/"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=state.bucket, Prefix=prefix):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=state.bucket, Delete={"Objects": keys, "Quiet": True})
    if state.own_bucket:
        s3.delete_bucket(Bucket=state.bucket)
