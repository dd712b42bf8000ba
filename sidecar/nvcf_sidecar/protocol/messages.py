"""The protobuf messages of the `nvcf` package under short names, and the rules around them (§3).

Generated classes live in `gen/`; this module is where the rest of the code imports them from, and
where decoding, the 6 MiB cap and the choice of attach connection are decided once.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from nvcf_sidecar.protocol.errors import MalformedMessage, MessageTooLarge, MissingAttachConfig
from nvcf_sidecar.protocol.gen import nvcf_pb2, nvcf_pb2_grpc
from nvcf_sidecar.protocol.limits import MAX_MESSAGE_BYTES

__all__ = [
    "ConnectionConfig",
    "ErrorDetails",
    "HTTP1ProtocolConfig",
    "InputAssetReference",
    "InvokeStatus",
    "LargeResponseDownloadCredentialsRequest",
    "LargeResponseDownloadCredentialsResponse",
    "ProvisionWorkerRequest",
    "ProvisionWorkerResponse",
    "RefreshLargeUploadCredentialsRequest",
    "RefreshLargeUploadCredentialsResponse",
    "StatefulConfig",
    "StatelessConfig",
    "StringKV",
    "WorkerConnect",
    "WorkerConnectOnceResponse",
    "WorkerInvokeFunctionRequest",
    "WorkerResultTracking",
    "WorkerServicer",
    "WorkerStub",
    "add_worker_servicer",
    "attach_config",
    "decode_invoke_request",
    "encode_invoke_request",
    "first_http1_config",
]

WorkerInvokeFunctionRequest = nvcf_pb2.WorkerInvokeFunctionRequest
StatefulConfig = nvcf_pb2.WorkerInvokeFunctionRequest.StatefulConfig
StatelessConfig = nvcf_pb2.WorkerInvokeFunctionRequest.StatelessConfig
ConnectionConfig = nvcf_pb2.WorkerInvokeFunctionRequest.StatelessConfig.ConnectionConfig
HTTP1ProtocolConfig = (
    nvcf_pb2.WorkerInvokeFunctionRequest.StatelessConfig.ConnectionConfig.HTTP1ProtocolConfig
)
StringKV = nvcf_pb2.StringKV
InputAssetReference = nvcf_pb2.InputAssetReference
InvokeStatus = nvcf_pb2.InvokeStatus
ErrorDetails = nvcf_pb2.ErrorDetails
WorkerResultTracking = nvcf_pb2.WorkerResultTracking
WorkerConnect = nvcf_pb2.WorkerConnect
WorkerConnectOnceResponse = nvcf_pb2.WorkerConnectOnceResponse
ProvisionWorkerRequest = nvcf_pb2.ProvisionWorkerRequest
ProvisionWorkerResponse = nvcf_pb2.ProvisionWorkerResponse
LargeResponseDownloadCredentialsRequest = nvcf_pb2.LargeResponseDownloadCredentialsRequest
LargeResponseDownloadCredentialsResponse = nvcf_pb2.LargeResponseDownloadCredentialsResponse
RefreshLargeUploadCredentialsRequest = nvcf_pb2.RefreshLargeUploadCredentialsRequest
RefreshLargeUploadCredentialsResponse = nvcf_pb2.RefreshLargeUploadCredentialsResponse

WorkerStub = nvcf_pb2_grpc.WorkerStub
WorkerServicer = nvcf_pb2_grpc.WorkerServicer
add_worker_servicer = nvcf_pb2_grpc.add_WorkerServicer_to_server


def decode_invoke_request(data: bytes) -> WorkerInvokeFunctionRequest:
    """Decode a work item (queue message or poll request); raises MalformedMessage."""
    request = WorkerInvokeFunctionRequest()
    try:
        request.ParseFromString(data)
    except DecodeError as error:
        raise MalformedMessage("WorkerInvokeFunctionRequest", len(data), str(error)) from None
    return request


def encode_invoke_request(request: WorkerInvokeFunctionRequest) -> bytes:
    """Encode a work item; raises MessageTooLarge above the 6 MiB queue cap (reference §5.1)."""
    data = request.SerializeToString()
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(len(data), MAX_MESSAGE_BYTES)
    return data


def first_http1_config(request: WorkerInvokeFunctionRequest) -> HTTP1ProtocolConfig:
    """The attach connection the worker uses: the first connection config with an http1Config.

    Raises MissingAttachConfig when there is none or its targetURI is empty.
    """
    for connection in request.statelessConfig.connectionConfigs:
        if connection.HasField("http1Config"):
            if connection.http1Config.targetURI:
                return connection.http1Config
            break
    raise MissingAttachConfig(request.requestId)


def attach_config(
    target_uri: str,
    response_token: str,
    *,
    request_token: str | None = None,
    proxy_uri: str | None = None,
) -> StatelessConfig:
    """The `statelessConfig` the IS puts in a work item: one HTTP/1 attach connection.

    `request_token` stays unset (not empty) when the whole body fit inline, and `proxy_uri` when
    the worker reaches the IS directly.
    """
    config = StatelessConfig()
    http1 = config.connectionConfigs.add().http1Config
    http1.targetURI = target_uri
    http1.responseAuthorizationToken = response_token
    if request_token is not None:
        http1.requestAuthorizationToken = request_token
    if proxy_uri is not None:
        http1.proxyURI = proxy_uri
    return config
