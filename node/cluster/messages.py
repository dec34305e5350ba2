"""NCL messages and the Bacalhau models they carry, with Bacalhau's JSON field names.

Every name taken from Bacalhau's source is in this module: subjects, message types, metadata keys (in
:mod:`.envelope`), JSON field names, enum values. They were read from Bacalhau's source at the release
pinned below (``pkg/transport/nclprotocol``, ``pkg/lib/envelope``, ``pkg/lib/ncl``, ``pkg/models``,
``pkg/models/messages``, ``pkg/nats/proxy``, ``pkg/nats/stream``); checking against another release changes
this module only. Attributes are snake_case; each carries its wire name (Go's JSON name) as its alias.

Models accept fields they do not know (``extra="allow"``): an orchestrator of a newer release may send more.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

BACALHAU_RELEASE = "v1.9.3"
"""The Bacalhau release this module follows (source read at commit e28960c, 9 dependency bumps after the tag)."""
BACALHAU_COMMIT = "e28960c75"
PROTOCOL_NCL_V1 = "ncl/v1"
ENGINE_DOCKER = "docker"

# Message types (pkg/models/messages/constants.go)
ASK_FOR_BID = "AskForBid"
BID_ACCEPTED = "BidAccepted"
BID_REJECTED = "BidRejected"
CANCEL_EXECUTION = "CancelExecution"
BID_RESULT = "BidResult"
RUN_RESULT = "RunResult"
COMPUTE_ERROR = "ComputeError"
HANDSHAKE_REQUEST = "transport.HandshakeRequest"
HEARTBEAT_REQUEST = "transport.HeartbeatRequest"
NODE_INFO_UPDATE_REQUEST = "transport.UpdateNodeInfoRequest"
SHUTDOWN_NOTICE_REQUEST = "transport.ShutdownNoticeRequest"
HANDSHAKE_RESPONSE = "transport.HandshakeResponse"
HEARTBEAT_RESPONSE = "transport.HeartbeatResponse"
NODE_INFO_UPDATE_RESPONSE = "transport.UpdateNodeInfoResponse"
SHUTDOWN_NOTICE_RESPONSE = "transport.ShutdownNoticeResponse"
BAC_ERROR = "BacError"  # pkg/lib/ncl/error_response.go: an error answered to a request
KEY_STATUS_CODE = "Bacalhau-StatusCode"
KEY_ERROR_CODE = "Bacalhau-ErrorCode"
HANDSHAKE_REQUIRED = "HandshakeRequired"  # pkg/orchestrator/nodes/errors.go

INBOUND_TYPES = frozenset({ASK_FOR_BID, BID_ACCEPTED, BID_REJECTED, CANCEL_EXECUTION})

# Log streaming (pkg/nats/proxy, pkg/nats/stream)
LOGS_METHOD = "ExecutionLogs/v1"
STREAM_DATA = 1
STREAM_CLOSE = 2
CLOSE_NORMAL = 1000
CLOSE_BAD_REQUEST = 4000
CLOSE_INTERNAL_ERROR = 5000
LOG_STDOUT = 1
LOG_STDERR = 2


def subject_control(node_id: str) -> str:
    """Control requests of the node (handshake, heartbeat, node info, shutdown)."""
    return f"bacalhau.global.compute.{node_id}.out.ctrl"


def subject_in(node_id: str) -> str:
    """Data messages to the node."""
    return f"bacalhau.global.compute.{node_id}.in.msgs"


def subject_out(node_id: str) -> str:
    """Data messages from the node."""
    return f"bacalhau.global.compute.{node_id}.out.msgs"


SUBJECT_ALL_CONTROL = "bacalhau.global.compute.*.out.ctrl"


def subject_logs(node_id: str) -> str:
    """Where the orchestrator asks for an execution's logs (``node.compute.<id>.ExecutionLogs/v1``)."""
    return f"node.compute.{node_id}.{LOGS_METHOD}"


class ExecutionStateType(IntEnum):
    """pkg/models/execution.go; states travel as integers."""

    UNDEFINED = 0
    NEW = 1
    ASK_FOR_BID = 2
    ASK_FOR_BID_ACCEPTED = 3
    ASK_FOR_BID_REJECTED = 4
    BID_ACCEPTED = 5
    RUNNING = 6
    PUBLISHING = 7
    BID_REJECTED = 8
    COMPLETED = 9
    FAILED = 10
    CANCELLED = 11


class DesiredStateType(IntEnum):
    PENDING = 0  # ask for a bid and wait for BidAccepted
    RUNNING = 1  # bid and, if yes, run at once (no BidResult is sent for a yes)
    STOPPED = 2


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


def go_time(dt: datetime | None = None) -> str:
    """A time as Go's encoding/json writes it (RFC 3339 with nanoseconds, UTC)."""
    dt = (dt or datetime.now(UTC)).astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond:06d}000Z"


# ---------------------------------------------------------------- shared models (pkg/models)


class Resources(_Wire):
    cpu: float = Field(default=0.0, alias="CPU")
    memory: int = Field(default=0, alias="Memory")
    disk: int = Field(default=0, alias="Disk")
    gpu: int = Field(default=0, alias="GPU")


class BuildVersionInfo(_Wire):
    major: str = Field(default="", alias="Major")
    minor: str = Field(default="", alias="Minor")
    git_version: str = Field(default="", alias="GitVersion")
    git_commit: str = Field(default="", alias="GitCommit")
    build_date: str = Field(default="0001-01-01T00:00:00Z", alias="BuildDate")
    goos: str = Field(default="linux", alias="GOOS")
    goarch: str = Field(default="", alias="GOARCH")


class ComputeNodeInfo(_Wire):
    execution_engines: list[str] = Field(default_factory=list, alias="ExecutionEngines")
    publishers: list[str] = Field(default_factory=list, alias="Publishers")
    storage_sources: list[str] = Field(default_factory=list, alias="StorageSources")
    max_capacity: Resources = Field(default_factory=Resources, alias="MaxCapacity")
    queue_used_capacity: Resources = Field(default_factory=Resources, alias="QueueCapacity")
    available_capacity: Resources = Field(default_factory=Resources, alias="AvailableCapacity")
    max_job_requirements: Resources = Field(default_factory=Resources, alias="MaxJobRequirements")
    running_executions: int = Field(default=0, alias="RunningExecutions")
    enqueued_executions: int = Field(default=0, alias="EnqueuedExecutions")
    address: str = Field(default="", alias="address")


class NodeInfo(_Wire):
    node_id: str = Field(alias="NodeID")
    node_type: str = Field(
        default="Compute", alias="NodeType"
    )  # models.NodeType marshals as text: "Requester" or "Compute"
    labels: dict[str, str] = Field(default_factory=dict, alias="Labels")
    supported_protocols: list[str] = Field(default_factory=lambda: [PROTOCOL_NCL_V1], alias="SupportedProtocols")
    compute_node_info: ComputeNodeInfo = Field(default_factory=ComputeNodeInfo, alias="ComputeNodeInfo")
    bacalhau_version: BuildVersionInfo = Field(default_factory=BuildVersionInfo, alias="BacalhauVersion")

    def static_view(self) -> dict[str, Any]:
        """What ``NodeInfo.HasStaticConfigChanged`` compares: everything but the changing capacity."""
        c = self.compute_node_info
        return {
            "labels": self.labels,
            "protocols": self.supported_protocols,
            "engines": c.execution_engines,
            "publishers": c.publishers,
            "sources": c.storage_sources,
            "max": c.max_capacity.model_dump(),
            "max_job": c.max_job_requirements.model_dump(),
        }


class Event(_Wire):
    message: str = Field(default="", alias="Message")
    topic: str = Field(default="", alias="Topic")
    timestamp: str = Field(default_factory=go_time, alias="Timestamp")
    details: dict[str, str] | None = Field(default=None, alias="Details")


class State(_Wire):
    state_type: int = Field(default=0, alias="StateType")
    message: str = Field(default="", alias="Message")
    details: dict[str, str] | None = Field(default=None, alias="Details")


class SpecConfig(_Wire):
    type: str = Field(default="", alias="Type")
    params: dict[str, Any] | None = Field(default=None, alias="Params")


class InputSource(_Wire):
    source: SpecConfig | None = Field(default=None, alias="Source")
    alias: str = Field(default="", alias="Alias")
    target: str = Field(default="", alias="Target")


class ResultPath(_Wire):
    name: str = Field(default="", alias="Name")
    path: str = Field(default="", alias="Path")


class ResourcesConfig(_Wire):
    cpu: str = Field(default="", alias="CPU")
    memory: str = Field(default="", alias="Memory")
    disk: str = Field(default="", alias="Disk")
    gpu: str = Field(default="", alias="GPU")


class NetworkConfig(_Wire):
    type: str | int = Field(
        default="Default", alias="Type"
    )  # models.Network marshals as text: Default, None, Host, Full, HTTP, Bridge
    domains: list[str] | None = Field(default=None, alias="Domains")
    ports: list[dict[str, Any]] | None = Field(default=None, alias="Ports")


class TimeoutConfig(_Wire):
    execution_timeout: int = Field(default=0, alias="ExecutionTimeout")  # seconds
    queue_timeout: int = Field(default=0, alias="QueueTimeout")
    total_timeout: int = Field(default=0, alias="TotalTimeout")


class Task(_Wire):
    name: str = Field(default="", alias="Name")
    engine: SpecConfig | None = Field(default=None, alias="Engine")
    publisher: SpecConfig | None = Field(default=None, alias="Publisher")
    env: dict[str, str] | None = Field(default=None, alias="Env")
    meta: dict[str, str] | None = Field(default=None, alias="Meta")
    input_sources: list[InputSource] | None = Field(default=None, alias="InputSources")
    result_paths: list[ResultPath] | None = Field(default=None, alias="ResultPaths")
    resources_config: ResourcesConfig | None = Field(default=None, alias="Resources")
    network: NetworkConfig | None = Field(default=None, alias="Network")
    timeouts: TimeoutConfig | None = Field(default=None, alias="Timeouts")


class Job(_Wire):
    id: str = Field(default="", alias="ID")
    name: str = Field(default="", alias="Name")
    namespace: str = Field(default="", alias="Namespace")
    type: str = Field(default="batch", alias="Type")
    priority: int = Field(default=0, alias="Priority")
    count: int = Field(default=0, alias="Count")
    meta: dict[str, str] | None = Field(default=None, alias="Meta")
    labels: dict[str, str] | None = Field(default=None, alias="Labels")
    tasks: list[Task] = Field(default_factory=list, alias="Tasks")


class Execution(_Wire):
    id: str = Field(alias="ID")
    namespace: str = Field(default="", alias="Namespace")
    node_id: str = Field(default="", alias="NodeID")
    job_id: str = Field(default="", alias="JobID")
    job: Job | None = Field(default=None, alias="Job")
    allocated_resources: dict[str, Any] | None = Field(default=None, alias="AllocatedResources")
    desired_state: State = Field(default_factory=State, alias="DesiredState")
    compute_state: State = Field(default_factory=State, alias="ComputeState")


class RunCommandResult(_Wire):
    """models.RunCommandResult; note ``stderr`` in lower case, as Bacalhau spells it."""

    stdout: str = Field(default="", alias="Stdout")
    stdout_truncated: bool = Field(default=False, alias="StdoutTruncated")
    stderr: str = Field(default="", alias="stderr")
    stderr_truncated: bool = Field(default=False, alias="StderrTruncated")
    exit_code: int = Field(default=0, alias="ExitCode")
    error_msg: str = Field(default="", alias="ErrorMsg")


# ---------------------------------------------------------------- control plane (messages/control_plane.go)


class HandshakeRequest(_Wire):
    node_info: NodeInfo = Field(alias="NodeInfo")
    start_time: str = Field(default_factory=go_time, alias="StartTime")
    last_orchestrator_seq_num: int = Field(default=0, alias="LastOrchestratorSeqNum")


class HandshakeResponse(_Wire):
    accepted: bool = Field(default=False, alias="accepted")
    reason: str = Field(default="", alias="reason")
    last_compute_seq_num: int = Field(default=0, alias="LastComputeSeqNum")
    starting_orchestrator_seq_num: int = Field(default=0, alias="LastOrchestratorSeqNum")


class HeartbeatRequest(_Wire):
    node_id: str = Field(alias="NodeID")
    available_capacity: Resources = Field(default_factory=Resources, alias="AvailableCapacity")
    queue_used_capacity: Resources = Field(default_factory=Resources, alias="QueueUsedCapacity")
    last_orchestrator_seq_num: int = Field(default=0, alias="LastOrchestratorSeqNum")


class HeartbeatResponse(_Wire):
    last_compute_seq_num: int = Field(default=0, alias="LastComputeSeqNum")


class UpdateNodeInfoRequest(_Wire):
    node_info: NodeInfo = Field(alias="NodeInfo")


class UpdateNodeInfoResponse(_Wire):
    accepted: bool = Field(default=False, alias="accepted")
    reason: str = Field(default="", alias="reason")


class ShutdownNoticeRequest(_Wire):
    node_id: str = Field(alias="NodeID")
    reason: str = Field(default="", alias="Reason")
    last_orchestrator_seq_num: int = Field(default=0, alias="LastOrchestratorSeqNum")


class ShutdownNoticeResponse(_Wire):
    last_compute_seq_num: int = Field(default=0, alias="LastComputeSeqNum")


class BacError(_Wire):
    """bacerrors.JSONError: what a responder answers when a request failed."""

    cause: str = Field(default="", alias="Cause")
    hint: str = Field(default="", alias="Hint")
    retryable: bool = Field(default=False, alias="Retryable")
    fails_execution: bool = Field(default=False, alias="FailsExecution")
    component: str = Field(default="", alias="Component")
    http_status_code: int = Field(default=0, alias="HTTPStatusCode")
    details: dict[str, str] | None = Field(default=None, alias="Details")
    code: str = Field(default="", alias="Code")


# ---------------------------------------------------------------- data plane (messages/bidding.go, execution.go)


class BaseRequest(_Wire):
    events: list[Event] | None = Field(default=None, alias="Events")

    def message(self) -> str:
        return self.events[0].message if self.events else ""


class AskForBidRequest(BaseRequest):
    execution: Execution = Field(alias="Execution")


class BidAcceptedRequest(BaseRequest):
    execution_id: str = Field(alias="ExecutionID")
    accepted: bool = Field(default=True, alias="Accepted")


class BidRejectedRequest(BaseRequest):
    execution_id: str = Field(alias="ExecutionID")


class CancelExecutionRequest(BaseRequest):
    execution_id: str = Field(alias="ExecutionID")


class BaseResponse(_Wire):
    execution_id: str = Field(alias="ExecutionID")
    job_id: str = Field(default="", alias="JobID")
    job_type: str = Field(default="", alias="JobType")
    events: list[Event] = Field(default_factory=list, alias="Events")


class BidResult(BaseResponse):
    accepted: bool = Field(alias="Accepted")


class RunResult(BaseResponse):
    publish_result: SpecConfig | None = Field(default=None, alias="PublishResult")
    run_command_result: RunCommandResult | None = Field(default=None, alias="RunCommandResult")


class ComputeError(BaseResponse):
    """The error's text is the first event's message (``BaseResponse.Message()``)."""


INBOUND_MODELS: dict[str, type[BaseRequest]] = {
    ASK_FOR_BID: AskForBidRequest,
    BID_ACCEPTED: BidAcceptedRequest,
    BID_REJECTED: BidRejectedRequest,
    CANCEL_EXECUTION: CancelExecutionRequest,
}
OUTBOUND_MODELS: dict[str, type[BaseResponse]] = {
    BID_RESULT: BidResult,
    RUN_RESULT: RunResult,
    COMPUTE_ERROR: ComputeError,
}

# Event topics and texts the node writes (pkg/compute/events.go, pkg/models/event.go).
TOPIC_BID = "Exec Scanning"  # bids
TOPIC_EXECUTION = "Execution"  # a completed execution (ExecCompletedEvent)
TOPIC_RUNNING = "Running Execution"  # a failure before publishing (BaseExecutor.Run's handleFailure)
TOPIC_PUBLISHING = "Publishing Results"  # a failure to publish
EXEC_COMPLETED_MESSAGE = "Completed successfully"
DETAILS_IS_ERROR = "IsError"  # models.DetailsKeyIsError: "true" on an event that reports an error


class AckResult(_Wire):
    """ncl.Result: ``{}`` acknowledges a data message; ``{"error": ..., "delay": ns}`` refuses it."""

    error: str = Field(default="", alias="error")
    delay: int = Field(default=0, alias="delay")


# ---------------------------------------------------------------- log streaming (pkg/nats/stream)


class StreamRequest(_Wire):
    consumer_id: str = Field(default="", alias="consumerId")
    stream_id: str = Field(default="", alias="streamId")
    heartbeat_request_sub: str = Field(default="", alias="heartBeatRequestSub")
    body: str = Field(default="", alias="body")  # Go []byte: base64 of the JSON of ExecutionLogsRequest


class ExecutionLogsRequest(_Wire):
    execution_id: str = Field(alias="ExecutionID")
    node_id: str = Field(default="", alias="NodeID")
    tail: bool = Field(default=False, alias="Tail")
    follow: bool = Field(default=False, alias="Follow")


def dump(model: BaseModel) -> dict[str, Any]:
    """A model's wire JSON (aliases, as Bacalhau's field names)."""
    return model.model_dump(mode="json", by_alias=True)
