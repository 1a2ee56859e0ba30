"""Secure aggregation end to end: exact sums under dropouts, clean aborts, malformed clients dropped."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest
from scipy.stats import chisquare  # type: ignore[import-untyped]
from secagg_support import finest_quantizer

from fedfleet.privacy.secagg import (
    ClientRejected,
    Exclusion,
    ExclusionReason,
    KeyBroadcast,
    MaskedInput,
    ProtocolStateError,
    PublicKeys,
    Quantizer,
    RevealedShare,
    RoundStats,
    SecAggAborted,
    SecAggClient,
    SecAggConfig,
    SecAggResult,
    SecAggServer,
    ShareKeys,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
    run_round,
)
from fedfleet.privacy.secagg.protocol import Upload

SESSION = bytes(range(32))


def make_config(n: int, m: int, *, degree: int | None = None, bits: int = 32, **kw: int) -> SecAggConfig:
    k = n - 1 if degree is None else degree
    t = kw.pop("threshold", k // 2 + 1)
    return SecAggConfig(
        round_id=7,
        session=SESSION,
        num_clients=n,
        vector_length=m,
        degree=k,
        threshold=t,
        min_survivors=kw.pop("min_survivors", t),
        modulus_bits=bits,
    )


def random_inputs(config: SecAggConfig, seed: int = 0, value_bits: int = 25) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    size = config.vector_length
    return {u: rng.integers(0, 2**value_bits, size, dtype=np.uint64) for u in range(config.num_clients)}


def expected_sum(inputs: dict[int, np.ndarray], included: frozenset[int], bits: int) -> np.ndarray:
    total = np.zeros_like(next(iter(inputs.values())))
    for u in included:
        total = total + inputs[u]
    return total & np.uint64(2**bits - 1)


class Recorder:
    """A tamper hook that changes nothing and keeps the uploads, to inspect what the server saw."""

    def __init__(self) -> None:
        self.uploads: dict[tuple[Stage, int], Upload] = {}

    def __call__(self, stage: Stage, u: int, message: Upload) -> Upload:
        self.uploads[(stage, u)] = message
        return message

    def of(self, stage: Stage) -> dict[int, Upload]:
        return {u: m for (s, u), m in self.uploads.items() if s is stage}


def assert_no_client_fully_revealed(recorder: Recorder) -> None:
    """The privacy invariant: no client has both its self-mask share and its masking-key share revealed."""
    b_owners: set[int] = set()
    s_owners: set[int] = set()
    for message in recorder.of(Stage.UNMASK).values():
        assert isinstance(message, UnmaskResponse)
        b_owners.update(s.owner for s in message.self_mask_shares)
        s_owners.update(s.owner for s in message.masking_key_shares)
    assert not b_owners & s_owners


# --- n = 100, m = 10^4, complete graph (the parameters chosen for 30% dropout) ----------------------------

N, M = 100, 10_000


@pytest.fixture(scope="module")
def cohort() -> tuple[SecAggConfig, Quantizer, dict[int, np.ndarray], np.ndarray]:
    config = SecAggConfig.create(round_id=3, num_clients=N, vector_length=M, dropout_rate=0.3, session=SESSION)
    assert (config.degree, config.threshold) == (N - 1, 50)
    quantizer = finest_quantizer(N, clip=1.0, modulus_bits=config.modulus_bits)
    rng = np.random.default_rng(42)
    floats = rng.normal(0.0, 0.5, size=(N, M))
    return config, quantizer, {u: quantizer.quantize(floats[u], rng) for u in range(N)}, floats


def test_exact_sum_without_dropouts_and_masked_inputs_look_uniform(
    cohort: tuple[SecAggConfig, Quantizer, dict[int, np.ndarray], np.ndarray],
) -> None:
    config, quantizer, inputs, floats = cohort
    recorder = Recorder()
    result = run_round(config, inputs, tamper=recorder)
    assert result.included == frozenset(range(N)) and not result.excluded
    assert np.array_equal(result.total, expected_sum(inputs, result.included, config.modulus_bits))
    # Dequantized, it is the float sum up to one quantization step per client.
    got = quantizer.dequantize_sum(result.total, N)
    assert np.max(np.abs(got - np.clip(floats, -1, 1).sum(axis=0))) <= N * quantizer.step
    # What the server sees of each client is indistinguishable from uniform, unlike the input itself.
    masked = recorder.of(Stage.MASKED_INPUT)[0]
    assert isinstance(masked, MaskedInput)
    y = np.frombuffer(masked.masked, dtype="<u4")
    assert chisquare(np.bincount(y >> 24, minlength=256)).pvalue > 1e-6
    assert chisquare(np.bincount(y & 0xFF, minlength=256)).pvalue > 1e-6
    assert chisquare(np.bincount((inputs[0] >> np.uint64(24)).astype(np.int64), minlength=256)).pvalue < 1e-10


@pytest.mark.parametrize("rate", [0.1, 0.3])
@pytest.mark.parametrize("stage", list(Stage), ids=lambda s: s.name)
def test_exact_sum_with_dropouts_at_each_stage(
    cohort: tuple[SecAggConfig, Quantizer, dict[int, np.ndarray], np.ndarray], stage: Stage, rate: float
) -> None:
    config, _, inputs, _ = cohort
    rng = np.random.default_rng(int(stage) * 100 + int(rate * 100))
    silent = {int(u) for u in rng.choice(N, size=int(rate * N), replace=False)}
    recorder = Recorder()
    result = run_round(config, inputs, silent_from={u: stage for u in silent}, tamper=recorder)
    if stage is Stage.UNMASK:
        # Dropping after uploading the masked input still counts: the others unmask it.
        assert result.included == frozenset(range(N)) and result.silent_in_unmask == silent
    else:
        assert result.included == frozenset(range(N)) - silent
        assert result.excluded == {u: Exclusion(stage, ExclusionReason.SILENT) for u in silent}
    assert np.array_equal(result.total, expected_sum(inputs, result.included, config.modulus_bits))
    assert_no_client_fully_revealed(recorder)


def test_exact_sum_with_dropouts_spread_over_all_stages(
    cohort: tuple[SecAggConfig, Quantizer, dict[int, np.ndarray], np.ndarray],
) -> None:
    config, _, inputs, _ = cohort
    silent = {u: Stage(u % 4) for u in range(0, N, 10)} | {u: Stage(u % 4) for u in range(1, N, 10)}
    result = run_round(config, inputs, silent_from=silent)
    assert result.included == frozenset(range(N)) - {u for u, s in silent.items() if s < Stage.UNMASK}
    assert np.array_equal(result.total, expected_sum(inputs, result.included, config.modulus_bits))


def test_sparse_graph_round_is_exact_and_each_client_talks_only_to_its_neighbours() -> None:
    config = SecAggConfig.create(round_id=1, num_clients=N, vector_length=1000, dropout_rate=0.1, session=SESSION)
    assert config.degree < N - 1 and config.threshold == config.degree // 2 + 1
    inputs = random_inputs(config, seed=3)
    silent = {u: Stage.MASKED_INPUT for u in range(0, N, 10)}
    stats = RoundStats()
    result = run_round(config, inputs, silent_from=silent, stats=stats)
    assert result.included == frozenset(range(N)) - set(silent)
    assert np.array_equal(result.total, expected_sum(inputs, result.included, config.modulus_bits))
    # Besides its masked vector a client uploads ~234 bytes per neighbour (a 164-byte sealed share pair and
    # a 70-byte revealed share): its cost grows with its degree, not with n.
    per_neighbour = (stats.upload_bytes[1] - 4 * 1000 - 64) / config.degree
    assert 200 < per_neighbour < 250
    assert all(len(config.neighbours(u)) == config.degree for u in range(N))


# --- aborts -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", list(Stage), ids=lambda s: s.name)
def test_round_aborts_when_too_few_clients_remain(stage: Stage) -> None:
    config = make_config(20, 64)  # complete graph, t = 10
    inputs = random_inputs(config)
    with pytest.raises(SecAggAborted) as info:
        run_round(config, inputs, silent_from={u: stage for u in range(11)})
    assert info.value.stage is stage


@pytest.mark.parametrize("stage", list(Stage), ids=lambda s: s.name)
def test_round_survives_the_most_dropouts_the_threshold_allows(stage: Stage) -> None:
    config = make_config(20, 64)  # t = 10 shares out of 19 holders: 11 clients must remain
    inputs = random_inputs(config)
    result = run_round(config, inputs, silent_from={u: stage for u in range(9)})
    assert np.array_equal(result.total, expected_sum(inputs, result.included, config.modulus_bits))


def test_a_thin_neighbourhood_aborts_once_masks_are_committed() -> None:
    config = make_config(20, 32, degree=4)  # t = 3 of 4 neighbours
    inputs = random_inputs(config)
    victim = 0
    silent = dict.fromkeys(sorted(config.neighbours(victim))[:2], Stage.MASKED_INPUT)
    with pytest.raises(SecAggAborted, match=f"client {victim}'s self mask") as info:
        run_round(config, inputs, silent_from=silent)
    assert info.value.stage is Stage.MASKED_INPUT


def test_a_thin_neighbourhood_before_masking_unravels_a_sparse_ring() -> None:
    # Before masking, a client left with fewer than t live neighbours is pruned; in a Harary ring its
    # neighbours then lose a holder too, and so on: with these (deliberately bad) parameters nobody is left.
    config = make_config(20, 32, degree=4)
    inputs = random_inputs(config)
    gone = sorted(config.neighbours(0))[:2]
    with pytest.raises(SecAggAborted, match="only 0 clients remain") as info:
        run_round(config, inputs, silent_from=dict.fromkeys(gone, Stage.ADVERTISE_KEYS))
    assert info.value.stage is Stage.ADVERTISE_KEYS


# --- malformed messages drop their sender; the round goes on -----------------------------------------------

SMALL = make_config(12, 256)  # complete graph, t = 6


def run_tampered(
    tamper: Callable[[Stage, int, Upload], Upload], config: SecAggConfig = SMALL
) -> tuple[SecAggResult, dict[int, np.ndarray], RoundStats]:
    inputs = random_inputs(config, seed=5, value_bits=config.modulus_bits - 4)
    stats = RoundStats()
    result = run_round(config, inputs, tamper=tamper, stats=stats)
    assert np.array_equal(result.total, expected_sum(inputs, result.included, config.modulus_bits))
    return result, inputs, stats


def at(stage: Stage, client: int, change: Callable[[Upload], Upload]) -> Callable[[Stage, int, Upload], Upload]:
    return lambda s, u, m: change(m) if (s, u) == (stage, client) else m


LOW_ORDER_POINTS = [bytes(32), (1).to_bytes(32, "little")]


@pytest.mark.parametrize(
    ("stage", "change", "detail"),
    [
        (Stage.ADVERTISE_KEYS, lambda m: dataclasses.replace(m, encryption_key=b"short"), "32 bytes"),
        (
            Stage.ADVERTISE_KEYS,
            lambda m: dataclasses.replace(m, masking_key=LOW_ORDER_POINTS[0]),
            "low-order",
        ),
        (
            Stage.ADVERTISE_KEYS,
            lambda m: dataclasses.replace(m, encryption_key=LOW_ORDER_POINTS[1]),
            "low-order",
        ),
        (Stage.ADVERTISE_KEYS, lambda m: dataclasses.replace(m, masking_key=m.encryption_key), "in use"),
        (Stage.SHARE_KEYS, lambda m: dataclasses.replace(m, shares=m.shares[1:]), "exactly once"),
        (Stage.SHARE_KEYS, lambda m: dataclasses.replace(m, shares=m.shares + m.shares[:1]), "exactly once"),
        (
            Stage.SHARE_KEYS,
            lambda m: dataclasses.replace(
                m,
                shares=(
                    dataclasses.replace(m.shares[0], ciphertext=m.shares[0].ciphertext[:-1]),
                    *m.shares[1:],
                ),
            ),
            "bytes",
        ),
        (Stage.SHARE_KEYS, lambda m: dataclasses.replace(m, self_mask_commitment=b""), "commitment"),
        (Stage.MASKED_INPUT, lambda m: dataclasses.replace(m, masked=m.masked[:-4]), "masked"),
        (Stage.MASKED_INPUT, lambda m: dataclasses.replace(m, complaints=(99,)), "complaints"),
        (Stage.MASKED_INPUT, lambda m: dataclasses.replace(m, complaints=(1, 1)), "complaints"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_malformed_upload_drops_only_its_sender(
    stage: Stage, change: Callable[[Upload], Upload], detail: str
) -> None:
    result, _, stats = run_tampered(at(stage, 3, change))
    assert result.excluded == {3: Exclusion(stage, ExclusionReason.MALFORMED, result.excluded[3].detail)}
    assert detail in result.excluded[3].detail
    assert result.included == frozenset(range(12)) - {3}
    assert [(r.client_id, r.dropped) for r in stats.rejected] == [(3, True)]


def test_copied_public_keys_drop_the_copier() -> None:
    keys_of_2: list[PublicKeys] = []

    def copy(stage: Stage, u: int, m: Upload) -> Upload:
        if stage is Stage.ADVERTISE_KEYS and u == 2:
            assert isinstance(m, PublicKeys)
            keys_of_2.append(m)
        if stage is Stage.ADVERTISE_KEYS and u == 5:
            return keys_of_2[0]
        return m

    result, _, _ = run_tampered(copy)
    assert result.excluded[5].reason is ExclusionReason.MALFORMED and 2 in result.included


def test_out_of_range_masked_values_drop_the_sender() -> None:
    config = make_config(12, 64, bits=20)

    def overflow(m: Upload) -> Upload:
        assert isinstance(m, MaskedInput)
        return dataclasses.replace(m, masked=(2**20).to_bytes(4, "little") + m.masked[4:])

    result, _, _ = run_tampered(at(Stage.MASKED_INPUT, 4, overflow), config)
    assert result.excluded[4] == Exclusion(Stage.MASKED_INPUT, ExclusionReason.MALFORMED, result.excluded[4].detail)
    assert "outside" in result.excluded[4].detail


def test_a_share_that_does_not_open_gets_its_sender_dropped_after_masking() -> None:
    def corrupt(m: Upload) -> Upload:
        assert isinstance(m, ShareKeys)
        first = m.shares[0]
        flipped = first.ciphertext[:-1] + bytes([first.ciphertext[-1] ^ 1])
        return dataclasses.replace(m, shares=(dataclasses.replace(first, ciphertext=flipped), *m.shares[1:]))

    recorder = Recorder()

    def both(stage: Stage, u: int, m: Upload) -> Upload:
        return recorder(stage, u, at(Stage.SHARE_KEYS, 6, corrupt)(stage, u, m))

    result, _, _ = run_tampered(both)
    # The receiver complains; the sender's input stays out although it uploaded one.
    receiver = 0
    complaint = recorder.of(Stage.MASKED_INPUT)[receiver]
    assert isinstance(complaint, MaskedInput) and complaint.complaints == (6,)
    assert result.excluded == {6: Exclusion(Stage.MASKED_INPUT, ExclusionReason.COMPLAINED, result.excluded[6].detail)}
    assert_no_client_fully_revealed(recorder)


@pytest.mark.parametrize(
    "change",
    [
        lambda m: dataclasses.replace(m, self_mask_shares=m.self_mask_shares[1:]),
        lambda m: dataclasses.replace(
            m,
            self_mask_shares=(RevealedShare(m.self_mask_shares[0].owner, b"\x00"), *m.self_mask_shares[1:]),
        ),
        lambda m: dataclasses.replace(
            m,
            self_mask_shares=(
                RevealedShare(m.self_mask_shares[0].owner, b"\xff" * 66),
                *m.self_mask_shares[1:],
            ),
        ),
    ],
)
def test_a_malformed_unmask_response_is_ignored_and_the_input_kept(
    change: Callable[[Upload], Upload],
) -> None:
    result, _, stats = run_tampered(at(Stage.UNMASK, 2, change))
    assert result.included == frozenset(range(12)) and result.silent_in_unmask == {2}
    assert [(r.client_id, r.stage) for r in stats.rejected] == [(2, Stage.UNMASK)]


def test_a_false_share_is_outvoted_and_reported() -> None:
    def lie(m: Upload) -> Upload:
        assert isinstance(m, UnmaskResponse)
        first = m.self_mask_shares[0]
        forged = (int.from_bytes(first.share, "big") + 12345).to_bytes(66, "big")
        return dataclasses.replace(m, self_mask_shares=(RevealedShare(first.owner, forged), *m.self_mask_shares[1:]))

    # Client 0 holds the first share of every owner's secret, so its lie sits in the first t shares.
    result, _, _ = run_tampered(at(Stage.UNMASK, 0, lie))
    assert result.included == frozenset(range(12)) and result.false_shares == {0}


# --- the server's and the client's own checks ------------------------------------------------------------


TINY = make_config(4, 8)  # complete graph, t = 2


def test_server_rejects_stale_duplicate_and_late_messages_without_dropping() -> None:
    server = SecAggServer(TINY)
    clients = [SecAggClient(TINY, u) for u in range(4)]
    other = SecAggClient(TINY, 1)
    first = clients[0].advertise_keys()
    with pytest.raises(ClientRejected, match="round 8") as info:
        server.receive_public_keys(0, dataclasses.replace(first, round_id=8))
    assert not info.value.dropped
    server.receive_public_keys(0, first)
    server.receive_public_keys(0, first)  # a retransmission is harmless
    with pytest.raises(ClientRejected, match="conflicts") as info:
        server.receive_public_keys(0, other.advertise_keys())
    assert not info.value.dropped
    with pytest.raises(ClientRejected, match="no such client"):
        server.receive_public_keys(9, first)
    for u in (2, 3):
        server.receive_public_keys(u, clients[u].advertise_keys())
    broadcasts = server.close_advertise_keys()
    assert sorted(broadcasts) == [0, 2, 3]  # client 1 never sent its own keys
    with pytest.raises(ClientRejected, match="not open"):
        server.receive_public_keys(1, PublicKeys(7, bytes(32), bytes(32)))
    with pytest.raises(ProtocolStateError):
        server.close_advertise_keys()
    with pytest.raises(ProtocolStateError):
        server.finalize()


def test_server_refuses_every_call_after_an_abort() -> None:
    server = SecAggServer(TINY)
    with pytest.raises(SecAggAborted, match="only 0 clients remain"):
        server.close_advertise_keys()
    with pytest.raises(SecAggAborted):
        server.receive_public_keys(0, SecAggClient(TINY, 0).advertise_keys())
    assert server.stage is None


def _advance_to_unmask(config: SecAggConfig) -> tuple[list[SecAggClient], dict[int, UnmaskRequest]]:
    server = SecAggServer(config)
    clients = [SecAggClient(config, u) for u in range(config.num_clients)]
    for c in clients:
        server.receive_public_keys(c.client_id, c.advertise_keys())
    for u, broadcast in server.close_advertise_keys().items():
        server.receive_share_keys(u, clients[u].share_keys(broadcast))
    for u, bundle in server.close_share_keys().items():
        server.receive_masked_input(u, clients[u].masked_input(bundle, np.zeros(config.vector_length, np.uint64)))
    return clients, server.close_masked_input()


def test_client_refuses_to_reveal_both_shares_of_one_neighbour() -> None:
    clients, requests = _advance_to_unmask(TINY)
    honest = requests[0]
    assert honest.survivors == (1, 2, 3) and honest.dropped == ()
    greedy = dataclasses.replace(honest, dropped=(1,))
    with pytest.raises(SecAggAborted, match="both survivor and dropped"):
        clients[0].unmask(greedy)
    with pytest.raises(ProtocolStateError):
        clients[0].unmask(honest)  # an aborted client stays silent
    with pytest.raises(SecAggAborted, match="does not hold"):
        clients[1].unmask(dataclasses.replace(requests[1], survivors=(0, 1, 2, 3)))
    response = clients[2].unmask(requests[2])
    assert [s.owner for s in response.self_mask_shares] == [0, 1, 3] and not response.masking_key_shares


def test_client_checks_the_key_broadcast() -> None:
    config = make_config(10, 8, degree=4)  # t = 3
    server = SecAggServer(config)
    clients = [SecAggClient(config, u) for u in range(10)]
    for c in clients:
        server.receive_public_keys(c.client_id, c.advertise_keys())
    broadcast = server.close_advertise_keys()[0]
    outsider = next(u for u in range(1, 10) if u not in config.neighbours(0))
    stranger = dataclasses.replace(broadcast.neighbours[0], client_id=outsider)
    cases = [
        (dataclasses.replace(broadcast, neighbours=broadcast.neighbours[:2]), "need 3"),
        (
            dataclasses.replace(broadcast, neighbours=(stranger, *broadcast.neighbours[1:])),
            "not a neighbour",
        ),
        (dataclasses.replace(broadcast, neighbours=broadcast.neighbours + broadcast.neighbours[:1]), "twice"),
        (dataclasses.replace(broadcast, round_id=6), "round 6"),
    ]
    for bad, reason in cases:
        with pytest.raises(SecAggAborted, match=reason):
            _fresh_share(config, bad)
    reused = dataclasses.replace(broadcast.neighbours[1], masking_key=broadcast.neighbours[0].encryption_key)
    with pytest.raises(SecAggAborted, match="reuses"):
        _fresh_share(
            config,
            dataclasses.replace(broadcast, neighbours=(broadcast.neighbours[0], reused, *broadcast.neighbours[2:])),
        )


def _fresh_share(config: SecAggConfig, broadcast: KeyBroadcast) -> None:
    client = SecAggClient(config, 0)
    client.advertise_keys()
    client.share_keys(broadcast)


def test_client_stages_run_in_order_and_bad_input_vectors_do_not_consume_a_stage() -> None:
    client = SecAggClient(TINY, 1)
    with pytest.raises(ProtocolStateError, match="expecting ADVERTISE_KEYS"):
        client.unmask(UnmaskRequest(7, (), ()))
    clients, _ = _advance_to_unmask(TINY)
    with pytest.raises(ProtocolStateError):
        clients[0].advertise_keys()
    config = make_config(4, 8)
    server = SecAggServer(config)
    cs = [SecAggClient(config, u) for u in range(4)]
    for c in cs:
        server.receive_public_keys(c.client_id, c.advertise_keys())
    for u, broadcast in server.close_advertise_keys().items():
        server.receive_share_keys(u, cs[u].share_keys(broadcast))
    bundle = server.close_share_keys()[0]
    with pytest.raises(ValueError, match="8 integers"):
        cs[0].masked_input(bundle, np.zeros(7, np.uint64))
    with pytest.raises(ValueError, match="outside"):
        cs[0].masked_input(bundle, np.full(8, 2**32, np.uint64))
    cs[0].masked_input(bundle, np.zeros(8, np.uint64))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"degree": 5}, "degree"),
        ({"threshold": 2}, "threshold"),
        ({"threshold": 5}, "threshold"),
        ({"session": b"short"}, "session"),
        ({"min_survivors": 0}, "min_survivors"),
        ({"modulus_bits": 63}, "modulus_bits"),
        ({"num_clients": 1}, "num_clients"),
    ],
)
def test_config_rules_name_the_field(change: dict[str, object], field: str) -> None:
    base = {
        "round_id": 1,
        "session": SESSION,
        "num_clients": 10,
        "vector_length": 4,
        "degree": 4,
        "threshold": 3,
    }
    with pytest.raises(ValueError, match=f"SecAggConfig.{field}"):
        SecAggConfig(**(base | {"min_survivors": 3} | change))  # type: ignore[arg-type]
