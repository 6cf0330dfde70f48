"""AWS sinks over HTTPS with boto3: IoT Data ``publish`` and Kinesis ``put_records``.

Credentials come from the standard AWS chain (environment, shared files,
instance or container role). boto3 calls block, so they run on worker
threads, a few at a time. Errors are sorted: throttling, timeouts and 5xx are
retried; a payload over the limit, an invalid topic or a refused credential
make the record Dead at once; no answer at all makes the sink unavailable
(no attempt spent).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
from iotgw_core.sink import DELIVERED, Delivery, Outcome, SinkUnavailable, skip_after_failure
from iotgw_core.spool import StoredRecord

from .common import PermanentError, TokenBucket, TopicTemplate, check_size

_PERMANENT_CODES = {
    "RequestEntityTooLargeException": "payload_too_large",
    "InvalidRequestException": "invalid_request",
    "UnauthorizedException": "not_authorized",
    "ForbiddenException": "not_authorized",
    "AccessDeniedException": "not_authorized",
    "MethodNotAllowedException": "invalid_request",
    "ResourceNotFoundException": "not_found",
    "ValidationException": "invalid_request",
}
_UNAVAILABLE = (EndpointConnectionError, ConnectionError, TimeoutError)


def _client_error(exc: ClientError) -> Delivery:
    code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
    message = str(exc.response.get("Error", {}).get("Message", ""))[:200]
    if code in _PERMANENT_CODES:
        return Delivery(Outcome.REJECT, f"{_PERMANENT_CODES[code]}: {code} {message}".strip())
    if "Throttl" in code or code in ("ProvisionedThroughputExceededException", "LimitExceeded"):
        return Delivery(Outcome.RETRY, f"throttled: {code}")
    return Delivery(Outcome.RETRY, f"publish_failed: {code} {message}".strip())


@dataclass(slots=True)
class AwsClientConfig:
    """Region, endpoint (for a VPC endpoint, the account's ATS data endpoint or a stand-in)."""

    region: str = "us-east-1"
    endpoint_url: str = ""
    timeout_s: float = 10.0
    concurrency: int = 8

    def client(self, service: str) -> Any:
        """A boto3 client with bounded timeouts and boto's own retries turned off."""
        return boto3.client(
            service,
            region_name=self.region,
            endpoint_url=self.endpoint_url or None,
            config=Config(
                connect_timeout=self.timeout_s,
                read_timeout=self.timeout_s,
                retries={"max_attempts": 1, "mode": "standard"},
                max_pool_connections=max(10, self.concurrency),
            ),
        )


@dataclass(slots=True)
class _Counters:
    published: int = 0
    last_ok: float | None = None
    last_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class IotDataSink:
    """``aws-iot-https``: one ``iot-data`` ``publish`` (QoS 1) per record, paced."""

    name = "aws-iot-https"

    def __init__(
        self,
        aws: AwsClientConfig,
        *,
        topic: TopicTemplate | None = None,
        rate: float = 100.0,
        burst: int = 10,
        max_publish_bytes: int = 128 * 1024,
    ) -> None:
        self.aws = aws
        self.topic = topic or TopicTemplate()
        self.topic.validate()
        self.bucket = TokenBucket(rate, burst)
        self.max_publish_bytes = max_publish_bytes
        self._client: Any = None
        self._gate = asyncio.Semaphore(max(1, aws.concurrency))
        self._counters = _Counters()

    async def start(self) -> None:
        """Build the boto3 client (credentials are resolved at the first call)."""
        self._client = await asyncio.to_thread(self.aws.client, "iot-data")

    async def _publish(self, topic: str, body: bytes) -> Delivery | BaseException:
        await self.bucket.take()
        async with self._gate:
            try:
                await asyncio.to_thread(self._client.publish, topic=topic, qos=1, payload=body)
            except ClientError as exc:
                return _client_error(exc)
            except (BotoCoreError, *_UNAVAILABLE) as exc:
                return exc
        return DELIVERED

    async def deliver(self, records: Sequence[StoredRecord]) -> list[Delivery]:
        """Publish each record; records of one device go one after another, in order."""
        answers: list[Delivery | None] = [None] * len(records)
        lanes: dict[tuple[str, str], list[tuple[int, str]]] = {}
        for index, rec in enumerate(records):
            try:
                topic = self.topic.render(rec)
                check_size(len(rec.body), topic, self.max_publish_bytes)
            except PermanentError as exc:
                answers[index] = Delivery(Outcome.REJECT, exc.reason)
                continue
            lanes.setdefault(rec.device_key, []).append((index, topic))
        unreachable: list[str] = []

        async def run_lane(lane: list[tuple[int, str]]) -> None:
            for position, (index, topic) in enumerate(lane):
                result = await self._publish(topic, records[index].body)
                if isinstance(result, BaseException):
                    unreachable.append(f"{type(result).__name__}: {result}")
                    for later, _ in lane[position:]:
                        answers[later] = Delivery(Outcome.SKIPPED, f"unreachable: {result}")
                    return
                answers[index] = result
                if result.outcome is Outcome.RETRY:
                    return  # the rest of this device waits (SKIPPED below)

        await asyncio.gather(*(run_lane(lane) for lane in lanes.values()))
        final = [a if a is not None else Delivery(Outcome.SKIPPED) for a in answers]
        done = sum(1 for a in final if a.outcome is Outcome.DELIVERED)
        self._counters.published += done
        if unreachable and all(a.outcome is Outcome.SKIPPED for a in final):
            self._counters.last_error = unreachable[0]
            raise SinkUnavailable(f"AWS IoT Data unreachable: {unreachable[0]}")
        if done:
            self._counters.last_ok, self._counters.last_error = time.time(), None
        return skip_after_failure(records, final)

    async def close(self) -> None:
        """Nothing to flush: every publish was answered."""

    def status(self) -> dict[str, Any]:
        """Publishes so far and the last error."""
        return {
            "sink": self.name,
            "status": "ok" if self._counters.last_error is None else "failing",
            "endpoint": self.aws.endpoint_url or f"iot-data {self.aws.region}",
            "published": self._counters.published,
            "last_ok": self._counters.last_ok,
            "last_error": self._counters.last_error,
        }


KINESIS_MAX_RECORDS = 500
KINESIS_MAX_REQUEST_BYTES = 5 * 1024 * 1024
KINESIS_MAX_RECORD_BYTES = 1024 * 1024


class KinesisSink:
    """``kinesis``: ``put_records`` of up to 500 records (5 MB) a request, for bulk.

    The partition key is ``tenant/device_id``, so a device's records share a
    shard; a record refused inside a request is retried on its own.
    """

    name = "kinesis"

    def __init__(self, aws: AwsClientConfig, stream_name: str) -> None:
        if not stream_name:
            raise ValueError("the kinesis sink needs IOTGW_KINESIS_STREAM_NAME")
        self.aws = aws
        self.stream_name = stream_name
        self._client: Any = None
        self._counters = _Counters()

    async def start(self) -> None:
        """Build the boto3 client."""
        self._client = await asyncio.to_thread(self.aws.client, "kinesis")

    def _requests(self, indexes: list[int], records: Sequence[StoredRecord]) -> list[list[int]]:
        out: list[list[int]] = []
        current: list[int] = []
        size = 0
        for index in indexes:
            rec = records[index]
            rec_size = len(rec.body) + len(rec.tenant) + len(rec.device_id) + 1
            if current and (
                len(current) >= KINESIS_MAX_RECORDS or size + rec_size > KINESIS_MAX_REQUEST_BYTES
            ):
                out.append(current)
                current, size = [], 0
            current.append(index)
            size += rec_size
        if current:
            out.append(current)
        return out

    async def deliver(self, records: Sequence[StoredRecord]) -> list[Delivery]:
        """put_records in requests of at most 500 records; one answer per record."""
        answers: list[Delivery | None] = [None] * len(records)
        sendable: list[int] = []
        for index, rec in enumerate(records):
            if len(rec.body) > KINESIS_MAX_RECORD_BYTES:
                answers[index] = Delivery(
                    Outcome.REJECT,
                    f"payload_too_large: {len(rec.body)} bytes over Kinesis' 1 MiB record limit",
                )
            else:
                sendable.append(index)
        unreachable: str | None = None
        for request in self._requests(sendable, records):
            entries = [
                {
                    "Data": records[i].body,
                    "PartitionKey": f"{records[i].tenant}/{records[i].device_id}",
                }
                for i in request
            ]
            try:
                response = await asyncio.to_thread(
                    self._client.put_records, StreamName=self.stream_name, Records=entries
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                    # A missing stream is configuration, not these records' fault: wait.
                    self._counters.last_error = f"stream {self.stream_name} not found"
                    raise SinkUnavailable(f"Kinesis: {exc}") from None
                failed = _client_error(exc)
                for i in request:
                    answers[i] = failed
                continue
            except (BotoCoreError, *_UNAVAILABLE) as exc:
                unreachable = f"{type(exc).__name__}: {exc}"
                for i in request:
                    answers[i] = Delivery(Outcome.SKIPPED, f"unreachable: {exc}")
                continue
            for i, result in zip(request, response.get("Records", []), strict=False):
                code = result.get("ErrorCode")
                if not code:
                    answers[i] = DELIVERED
                elif code == "ProvisionedThroughputExceededException":
                    answers[i] = Delivery(Outcome.RETRY, f"throttled: {code}")
                else:
                    answers[i] = Delivery(
                        Outcome.RETRY, f"publish_failed: {code} {result.get('ErrorMessage', '')}"
                    )
        final = [a if a is not None else Delivery(Outcome.SKIPPED) for a in answers]
        if unreachable and all(a.outcome is Outcome.SKIPPED for a in final):
            self._counters.last_error = unreachable
            raise SinkUnavailable(f"Kinesis unreachable: {unreachable}")
        done = sum(1 for a in final if a.outcome is Outcome.DELIVERED)
        self._counters.published += done
        if done:
            self._counters.last_ok, self._counters.last_error = time.time(), None
        return skip_after_failure(records, final)

    async def close(self) -> None:
        """Nothing buffered."""

    def status(self) -> dict[str, Any]:
        """Records put so far and the last error."""
        return {
            "sink": self.name,
            "status": "ok" if self._counters.last_error is None else "failing",
            "stream": self.stream_name,
            "published": self._counters.published,
            "last_ok": self._counters.last_ok,
            "last_error": self._counters.last_error,
        }
