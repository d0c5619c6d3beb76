"""Twitch's IRC lines, copied from its public documentation (dev.twitch.tv/docs/chat/irc, irc-commands,
irc-tags), read into chat lines, priorities and moderator removals; IRCv3 tag escaping."""

from __future__ import annotations

import pytest

from bridges.ircmsg import escape_tag, format_line, parse, unescape_tag
from bridges.lines import ChatLine, LineFilter, Retract
from bridges.twitch import chat_line, moderation, plain_text

DOCS_PRIVMSG = ("@badge-info=;badges=turbo/1;color=#0D4200;display-name=ronni;emotes=25:0-4,12-16/1902:6-10;"
                "id=b34ccfc7-4977-403a-8a94-33c6bac34fb8;mod=0;room-id=1337;subscriber=0;tmi-sent-ts=1507246572675;"
                "turbo=1;user-id=1337;user-type=global_mod :ronni!ronni@ronni.tmi.twitch.tv PRIVMSG #ronni :Kappa Keepo Kappa")
DOCS_BITS = ("@badge-info=;badges=staff/1,bits/1000;bits=100;color=;display-name=ronni;emotes=;"
             "id=b34ccfc7-4977-403a-8a94-33c6bac34fb8;mod=0;room-id=12345678;subscriber=0;tmi-sent-ts=1507246572675;"
             "turbo=1;user-id=12345678;user-type=staff :ronni!ronni@ronni.tmi.twitch.tv PRIVMSG #ronni :cheer100")
DOCS_RESUB = ("@badge-info=;badges=staff/1,broadcaster/1,turbo/1;color=#008000;display-name=ronni;emotes=;"
              "id=db25007f-7a18-43eb-9379-80131e44d633;login=ronni;mod=0;msg-id=resub;msg-param-cumulative-months=6;"
              "msg-param-streak-months=2;msg-param-should-share-streak=1;msg-param-sub-plan=Prime;"
              "msg-param-sub-plan-name=Prime;room-id=12345678;subscriber=1;"
              "system-msg=ronni\\shas\\ssubscribed\\sfor\\s6\\smonths!;tmi-sent-ts=1507246572675;turbo=1;"
              "user-id=87654321;user-type=staff :tmi.twitch.tv USERNOTICE #dallas :Great stream -- keep it coming!")
DOCS_RAID = ("@badge-info=;badges=turbo/1;color=#9ACD32;display-name=TestChannel;emotes=;"
             "id=3d830f12-795c-447d-af3c-ea05e40fbddb;login=testchannel;mod=0;msg-id=raid;"
             "msg-param-displayName=TestChannel;msg-param-login=testchannel;msg-param-viewerCount=15;room-id=33332222;"
             "subscriber=0;system-msg=15\\sraiders\\sfrom\\sTestChannel\\shave\\sjoined\\n!;tmi-sent-ts=1507246572675;"
             "turbo=1;user-id=123456;user-type= :tmi.twitch.tv USERNOTICE #othertestchannel")
DOCS_CLEARMSG = ("@login=foo;room-id=;target-msg-id=94e6c7ff-bf98-4faa-af5d-7ad633a158a9;tmi-sent-ts=1642720582342 "
                 ":tmi.twitch.tv CLEARMSG #bar :what a great day")
DOCS_BAN = "@room-id=12345678;target-user-id=87654321;tmi-sent-ts=1642715756806 :tmi.twitch.tv CLEARCHAT #dallas :ronni"
DOCS_CLEAR_ALL = "@room-id=12345678;tmi-sent-ts=1642715695392 :tmi.twitch.tv CLEARCHAT #dallas"


def test_a_documented_privmsg_is_a_normal_line_under_its_message_id_and_display_name():
    line = chat_line(parse(DOCS_PRIVMSG), "#ronni")
    assert line == ChatLine("ronni", "Kappa Keepo Kappa", "normal", "b34ccfc7-4977-403a-8a94-33c6bac34fb8")
    assert line.synthesize_body() == {"text": "Kappa Keepo Kappa", "from": "ronni",
                                      "id": "b34ccfc7-4977-403a-8a94-33c6bac34fb8"}
    assert chat_line(parse(DOCS_PRIVMSG), "#elsewhere") is None


def test_bits_highlighted_and_redemptions_go_first_and_a_bare_cheer_is_still_read():
    assert chat_line(parse(DOCS_BITS), "#ronni").priority == "high"
    assert chat_line(parse(DOCS_BITS), "#ronni").text == "cheer100"  # nothing but the cheer: keep it
    tagged = DOCS_PRIVMSG.replace("mod=0;", "mod=0;msg-id=highlighted-message;")
    assert chat_line(parse(tagged), "#ronni").priority == "high"
    reward = DOCS_PRIVMSG.replace("mod=0;", "custom-reward-id=f2d4c3b8-6a1e-4b8f-9c1d-2e3f4a5b6c7d;mod=0;")
    assert chat_line(parse(reward), "#ronni").priority == "high"
    zero = DOCS_BITS.replace("bits=100", "bits=0")
    assert chat_line(parse(zero), "#ronni").priority == "normal"


def test_usernotices_resub_and_raid_are_high_lines_with_twitchs_sentence():
    resub = chat_line(parse(DOCS_RESUB), "#dallas")
    assert resub == ChatLine("ronni", "ronni has subscribed for 6 months! Great stream -- keep it coming!", "high",
                             "db25007f-7a18-43eb-9379-80131e44d633")
    raid = chat_line(parse(DOCS_RAID), "#othertestchannel")
    assert raid.priority == "high" and raid.text == "15 raiders from TestChannel have joined\n!"
    ritual = DOCS_RAID.replace("msg-id=raid", "msg-id=ritual")
    assert chat_line(parse(ritual), "#othertestchannel") is None


def test_clearmsg_and_clearchat_are_removals():
    assert moderation(parse(DOCS_CLEARMSG), "#bar") == (Retract(id="94e6c7ff-bf98-4faa-af5d-7ad633a158a9"), None)
    assert moderation(parse(DOCS_BAN), "#dallas") == (Retract(sender="ronni"), "ronni")
    assert moderation(parse(DOCS_CLEAR_ALL), "#dallas") == (Retract(), None)
    assert Retract().interrupt_body() == {} and Retract(sender="A").interrupt_body() == {"from": "A"}
    assert moderation(parse(DOCS_PRIVMSG), "#ronni") is None


def test_plain_irc_without_tags_and_formatting():
    msg = parse(":alice!a@host PRIVMSG #chan :\x02bold\x02 and \x0304,01red\x03")
    assert chat_line(msg, "#CHAN") == ChatLine("alice", "bold and red")
    assert chat_line(parse(":alice!a@host PRIVMSG #chan :\x01ACTION waves\x01"), "#chan").text == "waves"
    assert chat_line(parse(":alice!a@host PRIVMSG #chan :\x01VERSION\x01"), "#chan") is None
    assert plain_text("\x1ditalic\x1d") == "italic"


@pytest.mark.parametrize("value", ["a b;c\\d", "line\r\nbreak", "", "trailing\\"[:-1], "中文 空格"])
def test_tag_values_round_trip_through_escaping(value):
    assert unescape_tag(escape_tag(value)) == value
    line = format_line("PRIVMSG", "#c", "x", tags={"k": value}, trailing=True)
    assert parse(line).tags == {"k": value} and parse(line).params == ("#c", "x")


def test_parse_edges():
    assert parse(":tmi.twitch.tv 004 justinfan1 :-").params == ("justinfan1", "-")  # Twitch's two-field 004
    assert parse("PING :tmi.twitch.tv").params == ("tmi.twitch.tv",)
    assert parse("@a=b\\ :srv CMD x :y :z").tags == {"a": "b"} and parse("@a=b :srv CMD x :y :z").params == ("x", "y :z")
    with pytest.raises(ValueError):
        parse(":source-only")
    with pytest.raises(ValueError):
        format_line("PRIVMSG", "#c", "evil\r\nQUIT")


def test_mentions_of_the_streamer_go_first():
    f = LineFilter(mentions=["Ronni", "@主播"])
    assert [f.admit(ChatLine("a", t))[0].priority for t in ("hey @RONNI nice", "hi ronni!", "ronnie hi", "主播好", "wow")] \
        == ["high", "high", "normal", "high", "normal"]
    assert f.admit(ChatLine("a", "ronni", id="x"))[0].id == "x"


async def test_a_refused_login_ends_the_connection_with_twitchs_notice():
    from bridges.ircconn import IrcClosed, IrcConnection
    from tests.twitch_double import TwitchDouble

    double = TwitchDouble()
    await double.start()
    try:
        conn = IrcConnection("127.0.0.1", double.port, "#Streamer", "someuser", password="not-an-oauth-token")
        with pytest.raises(IrcClosed, match="Login authentication failed"):
            await conn.run()
        anonymous = IrcConnection("127.0.0.1", double.port, "#Streamer", "justinfan123",
                                  on_joined=lambda: double.reconnect())
        with pytest.raises(IrcClosed) as closed:
            await anonymous.run()
        assert closed.value.reconnect_now and anonymous.caps == {"twitch.tv/tags", "twitch.tv/commands"}
        assert "JOIN #streamer" in double.received  # Twitch's channel names are lower case
    finally:
        await double.close()
