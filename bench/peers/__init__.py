"""The peer job queues' side of `python -m bench jobs`: the no-op task each worker runs.

Each module is imported by that system's own worker command (`celery -A`, `rq worker`, `arq`),
with the Redis URL in `BENCH_REDIS_URL`.
"""
