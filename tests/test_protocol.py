"""The protocol layer on real JSON strings, broken ones included."""

from __future__ import annotations

import pytest

from agent.protocol import (
    Append,
    Configure,
    Interrupt,
    Ping,
    ProtocolError,
    Synthesize,
    parse_command,
)

MAX = 100


def parse(raw):
    return parse_command(raw, max_text_chars=MAX)


def code_of(raw) -> str:
    with pytest.raises(ProtocolError) as err:
        parse(raw)
    return err.value.code.value


def test_each_message_type_parses():
    s = parse('{"type":"synthesize","text":"Hi","id":"a","voice":"en","priority":"high","speed":1.5,'
              '"final":false,"from":"bob"}')
    assert isinstance(s, Synthesize) and s.from_ == "bob" and s.priority == "high" and s.final is False
    assert isinstance(parse('{"type":"append","id":"a","text":" more","final":true}'), Append)
    assert parse('{"type":"interrupt"}') == Interrupt()
    assert parse('{"type":"interrupt","id":"a"}').id == "a"
    c = parse('{"type":"configure","danmu":{"max_queue":5,"template":"{from}: {text}"},"barge_in":{"mode":"duck"}}')
    assert isinstance(c, Configure) and c.danmu.max_queue == 5 and c.barge_in.mode == "duck"
    assert parse('{"type":"ping","t":123}') == Ping(t=123)
    assert parse(b'{"type":"synthesize","text":"\xe4\xbd\xa0\xe5\xa5\xbd"}').text == "你好"
    assert parse('{"type":"synthesize","text":"x","speed":1}').speed == 1.0


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "not json",
        "{",
        "null",
        "[]",
        '"synthesize"',
        "{}",
        '{"type":"sing"}',
        '{"type":5}',
        '{"type":"synthesize"}',
        '{"type":"synthesize","text":""}',
        '{"type":"synthesize","text":5}',
        '{"type":"synthesize","text":"hi","priorty":"high"}',
        '{"type":"synthesize","text":"hi","priority":"urgent"}',
        '{"type":"synthesize","text":"hi","speed":3}',
        '{"type":"synthesize","text":"hi","speed":"fast"}',
        '{"type":"synthesize","text":"hi","final":"yes"}',
        '{"type":"synthesize","text":"hi","final":1}',
        '{"type":"synthesize","text":"hi","id":""}',
        '{"type":"append","text":"no id"}',
        '{"type":"interrupt","id":7}',
        '{"type":"configure","danmu":{"max_queue":0}}',
        '{"type":"configure","danmu":{"unknown_rule":1}}',
        '{"type":"configure","barge_in":{"mode":"shout"}}',
        b"\xff\xfe not utf-8",
        '{"type":"ping","t":1,"extra":true}',
    ],
)
def test_bad_messages_are_bad_message(raw):
    assert code_of(raw) == "bad_message"


def test_text_too_long_is_its_own_code_and_keeps_the_id():
    with pytest.raises(ProtocolError) as err:
        parse('{"type":"synthesize","id":"big","text":"' + "a" * (MAX + 1) + '"}')
    assert err.value.code.value == "text_too_long" and err.value.id == "big"


def test_oversized_message_is_refused_before_parsing():
    assert code_of('{"type":"synthesize","text":"' + "a" * 70_000 + '"}') == "bad_message"


def test_error_keeps_the_id_for_correlation():
    with pytest.raises(ProtocolError) as err:
        parse('{"type":"synthesize","id":"x1","text":"hi","priority":"urgent"}')
    assert err.value.id == "x1" and "priority" in err.value.message
