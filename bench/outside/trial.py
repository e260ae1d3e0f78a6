#!/usr/bin/env python3
"""An outside client's trial of refstream (issue 7): 20,000 qualifying deposits pushed at once
through a Kafka-protocol broker refstream's tests never use (Tansu, started by
scripts/outside-broker.sh) must come back as exactly 20,000 RewardGranted, each once.

Everything on the wire here is written and read by code that shares nothing with refstream:
kafka-python (a pure-Python Kafka client) and fastavro, with the Avro single-object framing
built from the specification. Postgres is read with psql only to learn the referral codes the
attribution worker minted (a producer would get them from `refstream code`).

Usage: trial.py --bootstrap HOST:PORT --database-url URL [--referrers 2875] [--referees 20000]
Exit status 0 only when every reward arrived exactly once.
"""
import argparse
import datetime
import io
import json
import os
import struct
import subprocess
import sys
import time
import uuid

import fastavro
from fastavro.schema import to_parsing_canonical_form
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

SCHEMAS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "schemas")
# The single-object framing's fingerprint, as the interop fixtures compute it from the spec.
sys.path.insert(0, os.path.join(SCHEMAS, "fixtures"))
from generate import crc64_avro  # noqa: E402


class Codec:
    """Avro single-object encoding of one schema, from the specification."""

    def __init__(self, name):
        with open(os.path.join(SCHEMAS, name + ".avsc")) as f:
            self.schema = fastavro.parse_schema(json.load(f))
        canonical = to_parsing_canonical_form(self.schema).encode()
        self.header = b"\xc3\x01" + struct.pack("<Q", crc64_avro(canonical))

    def encode(self, record):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self.schema, record)
        return self.header + buf.getvalue()

    def decode(self, payload):
        if payload[:10] != self.header:
            raise ValueError("not a record of this schema")
        return fastavro.schemaless_reader(io.BytesIO(payload[10:]), self.schema)


def psql(url, sql):
    out = subprocess.run(["psql", url, "-AtXq", "-c", sql], check=True, capture_output=True, text=True).stdout
    return [line.split("|") for line in out.splitlines() if line]


def wait_for(what, probe, timeout):
    started = time.time()
    while True:
        value = probe()
        if value is True:
            return time.time() - started
        if time.time() - started > timeout:
            sys.exit(f"trial: timed out after {timeout} s waiting for {what} (last: {value})")
        time.sleep(1)


def registration(user, code, n):
    return {
        "event_id": str(uuid.uuid4()),
        "user_id": user,
        "occurred_at": datetime.datetime.now(datetime.timezone.utc),
        "referral_code": code,
        "click_id": None,
        "platform": "android",
        "device_id": f"outside-device-{user}",
        # Every account on a network of its own: nothing for the fraud rules to link.
        "ip": f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}",
        "email": f"{user}@outside.example",
        "country": "PT",
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--referrers", type=int, default=2875)
    ap.add_argument("--referees", type=int, default=20000)
    ap.add_argument("--timeout", type=int, default=900)
    args = ap.parse_args()
    registered, deposited, granted = Codec("UserRegistered"), Codec("DepositCompleted"), Codec("RewardGranted")
    producer = KafkaProducer(bootstrap_servers=args.bootstrap, acks="all", linger_ms=5, max_in_flight_requests_per_connection=1)
    run = uuid.uuid4().hex[:6]

    referrers = [f"out-{run}-r{i}" for i in range(args.referrers)]
    for n, user in enumerate(referrers):
        producer.send("user-registered", key=user.encode(), value=registered.encode(registration(user, None, n)))
    producer.flush()
    took = wait_for(
        "referral codes",
        lambda: int(psql(args.database_url, f"SELECT count(*) FROM referral_codes WHERE user_id LIKE 'out-{run}-r%'")[0][0]) == len(referrers)
        or "not yet",
        args.timeout,
    )
    print(f"trial: {len(referrers)} referrers registered ({took:.0f} s)")
    codes = dict(psql(args.database_url, f"SELECT user_id, code FROM referral_codes WHERE user_id LIKE 'out-{run}-r%'"))

    referees = [f"out-{run}-e{i}" for i in range(args.referees)]
    registering = time.time()
    for n, user in enumerate(referees):
        code = codes[referrers[n % len(referrers)]]
        producer.send("user-registered", key=user.encode(), value=registered.encode(registration(user, code, 100_000 + n)))
    producer.flush()
    took = wait_for(
        "every referral approved",
        lambda: int(
            psql(
                args.database_url,
                f"SELECT count(*) FROM referrals WHERE referee_id LIKE 'out-{run}-e%' AND status = 'eligible'",
            )[0][0]
        )
        == len(referees)
        or "not yet",
        args.timeout,
    )
    took = time.time() - registering
    print(f"trial: {len(referees)} referees registered, attributed and approved in {took:.1f} s = {len(referees) / took:.0f}/s")

    # The burst: every qualifying deposit at once.
    started = time.time()
    for n, user in enumerate(referees):
        deposit = {
            "event_id": str(uuid.uuid4()),
            "deposit_id": f"out-{run}-d{n}",
            "user_id": user,
            "amount": __import__("decimal").Decimal("25.0000"),
            "currency": "USD",
            "payment_fingerprint": f"outside-card-{user}",
            "occurred_at": datetime.datetime.now(datetime.timezone.utc),
        }
        producer.send("deposit-completed", key=user.encode(), value=deposited.encode(deposit))
    producer.flush()
    print(f"trial: {len(referees)} deposits produced in {time.time() - started:.1f} s")

    consumer = KafkaConsumer(bootstrap_servers=args.bootstrap, enable_auto_commit=False, group_id=None)
    parts = [TopicPartition("reward-granted", p) for p in consumer.partitions_for_topic("reward-granted")]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    seen, by_reward, last_new = 0, {}, time.time()
    while time.time() - started < args.timeout:
        batch = consumer.poll(timeout_ms=1000)
        for records in batch.values():
            for m in records:
                g = granted.decode(m.value)
                seen += 1
                if g["qualifying_deposit_id"].startswith(f"out-{run}-"):
                    by_reward.setdefault(g["reward_id"], []).append(g)
                    last_new = time.time()
        ours = len(by_reward)
        if ours >= len(referees) and time.time() - last_new > 5:
            break
    elapsed = last_new - started
    deliveries = sum(len(v) for v in by_reward.values())
    deposits_paid = {g[0]["qualifying_deposit_id"] for g in by_reward.values()}
    paid_referrers = {g[0]["user_id"] for g in by_reward.values()}
    print(f"trial: {len(by_reward)} distinct RewardGranted for {len(deposits_paid)} deposits, {deliveries} records read "
          f"({deliveries - len(by_reward)} repeats), last after {elapsed:.1f} s = {len(by_reward) / max(elapsed, 0.001):.0f} rewards/s")
    ok = len(by_reward) == len(referees) == len(deposits_paid) and paid_referrers <= set(referrers)
    # The relay may re-send after a crash; with none, every reward is read once.
    ok = ok and deliveries == len(by_reward)
    books = psql(args.database_url, "SELECT count(*) FROM (SELECT currency FROM ledger_entries GROUP BY currency HAVING sum(amount) <> 0) x")
    ok = ok and books[0][0] == "0"
    print("trial: " + ("PASS: every deposit paid exactly once, the ledger balances" if ok else "FAIL"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
