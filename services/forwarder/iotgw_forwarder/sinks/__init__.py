"""Cloud and broker sinks of the forwarder, each behind iotgw_core.sink.Sink (docs/sinks.md)."""

from .aws import AwsClientConfig, IotDataSink, KinesisSink
from .common import TokenBucket, TopicTemplate
from .mqtt import MqttSink, MqttSinkConfig

__all__ = [
    "AwsClientConfig",
    "IotDataSink",
    "KinesisSink",
    "MqttSink",
    "MqttSinkConfig",
    "TokenBucket",
    "TopicTemplate",
]
