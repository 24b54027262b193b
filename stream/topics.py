"""Kafka topic names and explicit, idempotent topic creation.

Topics are created explicitly because the Tansu broker auto-creates unknown topics with 4
partitions, which would silently fix the partition count. The worker only checks that its topics
exist (`missing_topics`) unless WAVEBRIDGE_CREATE_TOPICS=true: on a managed cluster a typo in a topic
name must not quietly make a new topic.
"""
from __future__ import annotations

import time
from typing import Iterable, Mapping

from operators.vocab import DEFAULT_PARTITIONS, DEFAULT_TOPICS  # noqa: F401  (topic names: operators/vocab.py)


def ensure_topics(
    bootstrap: str,
    names: Iterable[str] = DEFAULT_TOPICS,
    partitions: int = DEFAULT_PARTITIONS,
    replication: int = 1,
    timeout_s: float = 30.0,
    configs: Mapping[str, Mapping[str, str]] | None = None,
    **kafka_security_kwargs,
) -> list[str]:
    """Create the topics that do not exist yet; returns the names created.

    Existing topics are left alone (their partition count is not changed).

    Parameters
    ----------
    bootstrap : str
        Kafka bootstrap servers, `host:port[,...]`.
    names : iterable of str
        Topics wanted.
    partitions, replication : int
        Of each topic created.
    timeout_s : float
        Seconds for each admin request, and for the topics to become visible.
    configs : mapping of str to mapping, optional
        Topic name -> its topic configs at creation (e.g. the progress topic's `cleanup.policy=compact`).
    **kafka_security_kwargs
        security_protocol, sasl_*, ssl_*: to kafka-python's admin client.
    """
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    names = list(dict.fromkeys(names))
    admin = _admin(bootstrap, timeout_s, **kafka_security_kwargs)
    try:
        existing = set(admin.list_topics())
        missing = [n for n in names if n not in existing]
        created: list[str] = []
        for name in missing:
            try:
                admin.create_topics([NewTopic(name=name, num_partitions=partitions, replication_factor=replication,
                                              topic_configs=dict((configs or {}).get(name, {})))],
                                    timeout_ms=int(timeout_s * 1000))
                created.append(name)
            except TopicAlreadyExistsError:
                pass  # raced with another creator: fine
        _wait_visible(admin, names, timeout_s)
        return created
    finally:
        admin.close()


def missing_topics(bootstrap: str, names: Iterable[str], timeout_s: float = 30.0, **kafka_security_kwargs) -> list[str]:
    """The names among `names` that the cluster does not have (a metadata request; creates nothing).

    Parameters
    ----------
    bootstrap, timeout_s, **kafka_security_kwargs
        As for `ensure_topics`.
    names : iterable of str
        Topics wanted.
    """
    admin = _admin(bootstrap, timeout_s, **kafka_security_kwargs)
    try:
        existing = set(admin.list_topics())
    finally:
        admin.close()
    return [n for n in dict.fromkeys(names) if n not in existing]


def prepare_topics(settings, names: Iterable[str]) -> list[str]:
    """Create the missing ones of `names` when WAVEBRIDGE_CREATE_TOPICS=true, else require them all.

    Parameters
    ----------
    settings : stream.config.Settings
        Broker, security, topic creation, partitions and replication.
    names : iterable of str
        Topics the process needs.

    Returns
    -------
    list of str
        The names created.

    Raises
    ------
    ConfigError
        Naming the missing topics (Kafka errors, e.g. an unreachable broker, pass through).
    """
    from stream.config import ConfigError

    s = settings
    bootstrap = ",".join(s.bootstrap_servers)
    if s.create_topics:
        from stream.progress import TOPIC_CONFIG

        return ensure_topics(bootstrap, names, partitions=s.topic_partitions, replication=s.topic_replication,
                             configs={s.topic_progress: TOPIC_CONFIG}, **s.kafka_client_kwargs())
    missing = missing_topics(bootstrap, names, **s.kafka_client_kwargs())
    if missing:
        raise ConfigError(f"topic(s) {', '.join(missing)} do not exist on {s.broker}: create them "
                          f"(docs/deploy.md), fix WAVEBRIDGE_TOPIC_*, or set WAVEBRIDGE_CREATE_TOPICS=true")
    return []


def _admin(bootstrap: str, timeout_s: float, **kafka_security_kwargs):
    from kafka import KafkaAdminClient

    opts = dict(client_id="wavebridge-topics", request_timeout_ms=int(timeout_s * 1000),
                bootstrap_timeout_ms=int(timeout_s * 1000))
    opts.update(kafka_security_kwargs)
    return KafkaAdminClient(bootstrap_servers=bootstrap, **opts)


def _wait_visible(admin, names: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        missing = set(names) - set(admin.list_topics())
        if not missing:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics not visible after creation: {sorted(missing)}")
        time.sleep(0.1)


def committed_total(bootstrap: str, group: str, topic: str, **kafka_kwargs) -> int:
    """Sum of a consumer group's committed offsets over a topic's partitions (0 where none): how many of the
    topic's messages the group has finished, when the topic started at offset 0.

    Parameters
    ----------
    bootstrap : str
        Kafka bootstrap servers.
    group, topic : str
        Consumer group and topic.
    **kafka_kwargs
        To kafka-python's admin client.
    """
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="wavebridge-offsets", **kafka_kwargs)
    try:
        offs = admin.list_group_offsets({group: None}).get(group, {})
    finally:
        admin.close()
    return sum(max(0, m.offset) for tp, m in offs.items() if tp.topic == topic)


def partition_count(bootstrap: str, name: str, **kafka_kwargs) -> int:
    """Number of partitions of an existing topic (via a metadata request; ValueError if it does not exist).

    Parameters
    ----------
    bootstrap : str
        Kafka bootstrap servers.
    name : str
        Topic.
    **kafka_kwargs
        To kafka-python's consumer.
    """
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, **kafka_kwargs)
    try:
        parts = consumer.partitions_for_topic(name)
        if not parts:
            raise ValueError(f"topic {name!r} does not exist")
        return len(parts)
    finally:
        consumer.close()
