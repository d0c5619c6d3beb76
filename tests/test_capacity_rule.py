"""The capacity rule (bench/capacity.py) as a pure function: the largest N such that N and
every step below it hold >= 99.9 % on time at the agent and at the client."""

from __future__ import annotations

from bench.capacity import capacity_of, first_failure, median_capacity, room_cost, step_failure


def step(rooms: int, agent: float | None = 1.0, client: float | None = 1.0, cpu: float = 30.0,
         runq: float | None = 1.0) -> dict:
    s = {"rooms": rooms, "server_cpu_pct": cpu, "load_cpu_pct": 20.0, "loop_runq_ms_per_s": runq,
         "client": {"on_time": client, "late": 0 if client == 1.0 else 7, "missing": 0, "late_after_ms": 10.0}}
    if agent is not ...:
        s["agent"] = {"on_time": agent, "frames_sent": 1000, "frames_expected": 1000, "frames_late": 3,
                      "late_after_ms": 5.0, "ticks_started_late": 0.017, "ticks_long": 0.0025,
                      "gc": {g: {"passes": 1, "ms": 1.0, "over_5ms": 0} for g in "012"}}
    return s


def test_a_later_passing_step_does_not_lift_capacity_past_a_failing_one():
    steps = [step(100), step(125), step(150, agent=0.9950), step(175)]
    assert capacity_of(steps) == 125
    assert first_failure(steps)["rooms"] == 150


def test_both_views_must_hold():
    assert capacity_of([step(5), step(10, client=0.9985), step(25)]) == 5
    assert capacity_of([step(5), step(10, agent=0.9989), step(25)]) == 5
    assert capacity_of([step(5), step(10, agent=0.999, client=0.999)]) == 10  # the target itself holds


def test_views_can_be_restricted_to_the_client():
    steps = [step(5, agent=0.5), step(10, client=0.99)]
    assert capacity_of(steps, views=("client",)) == 5
    assert capacity_of(steps) == 0


def test_nothing_received_is_not_on_time():
    assert capacity_of([step(5), step(10, client=None)]) == 5


def test_a_step_without_agent_counters_is_judged_by_the_client():  # the Pipecat peer
    assert capacity_of([step(5, agent=...), step(10, agent=..., client=0.9)]) == 5


def test_steps_are_taken_in_order_of_rooms():
    assert capacity_of([step(25), step(5), step(10, agent=0.98)]) == 5


def test_first_step_failing_means_zero():
    steps = [step(5, agent=0.98), step(10)]
    assert capacity_of(steps) == 0 and first_failure(steps)["rooms"] == 5
    assert first_failure([step(5)]) is None


def test_the_cause_names_the_view_and_separates_saturation_from_stalls():
    stalled = step_failure(step(25, agent=0.983, cpu=33.0))
    assert stalled.startswith("agent 98.30 %") and "loop stalls at 33 % CPU" in stalled
    assert "held between ticks" in stalled  # ticks start late far more often than they run long
    assert "saturated" in step_failure(step(150, agent=0.6, client=0.7, cpu=99.0))
    assert step_failure(step(25)) is None
    contended = step_failure(step(25, agent=0.983, cpu=33.0, runq=120.0))
    assert "waited 120 ms/s on the run queue" in contended and "held between ticks" not in contended
    client_only = step_failure(step(25, client=0.99))
    assert client_only.startswith("client 99.00 %") and "only the client saw it" in client_only


def test_median_of_ramps_is_a_step_that_was_reached():
    assert median_capacity([150, 100, 175]) == 150
    assert median_capacity([100, 150]) == 100
    assert median_capacity([]) == 0


def test_room_cost_against_the_opus_floor():
    cost = room_cost(server_cpu_pct=50.0, rooms=100, encode_floor_us=20.0)
    assert cost["cpu_pct_per_room"] == 0.5 and cost["us_per_frame"] == 100.0
    assert cost["opus_floor_pct_per_room"] == 0.1 and cost["ratio_to_floor"] == 5.0
    assert "ratio_to_floor" not in room_cost(50.0, 100, None)
    assert room_cost(server_cpu_pct=52.0, rooms=100, encode_floor_us=20.0, empty_cpu_pct=2.0)["ratio_to_floor"] == 5.0
