"""What LiveKit's standard UIs read from an agent participant, besides its audio.

- `lk.agent.state` (participant attribute): components-js (`useAgent`, `useSession`,
  `useVoiceAssistant().state`) shows an agent as connected only once it says `listening`,
  `thinking` or `speaking`, and reports "did not complete initializing" after 20 s
  otherwise. livekit-agents sets it with `local_participant.set_attributes`: `initializing`
  until the session runs, then `listening`, `speaking` from the first frame played until no
  speech is pending (voice/agent_session.py, agent_activity.py, room_io.py). The agent joins
  already `initializing` (the attribute is in its token), says `listening` once attached,
  and follows the room's events from there.
- Legacy transcriptions (`rtc.Transcription` packets): `useTrackTranscription` and
  `useVoiceAssistant().agentTranscriptions` read these, not the `lk.transcription` text
  stream; livekit-agents still sends both (room_io/_output.py), and so does the agent.
"""

from __future__ import annotations

from livekit import rtc

ATTR_AGENT_STATE = "lk.agent.state"
ATTR_AGENT_NAME = "lk.agent.name"
INITIALIZING = "initializing"
LISTENING = "listening"
SPEAKING = "speaking"


class AgentState:
    """The agent's `lk.agent.state`, followed from the room's events.

    `speaking` from an utterance's first frame (`started`) until nothing is playing or
    queued: between two queued utterances it stays `speaking`, as livekit-agents does while
    speech is pending. A room held by `pause` (or a barge-in pause) is `listening`."""

    def __init__(self) -> None:
        self.value = INITIALIZING

    def joined(self) -> str | None:
        return self._to(LISTENING)

    def after_event(self, ev: dict, speaker) -> str | None:
        """The new state after room event `ev` (the Speaker already moved on), or None
        when it did not change."""
        kind = ev.get("type")
        if kind in ("started", "resumed"):
            current = speaker.current
            if current is not None and current.started:
                return self._to(SPEAKING)
            return None
        if kind == "paused":
            return self._to(LISTENING)
        if kind in ("finished", "interrupted", "dropped", "error") and speaker.current is None and not speaker.queue:
            return self._to(LISTENING)
        return None

    def _to(self, value: str) -> str | None:
        if value == self.value:
            return None
        self.value = value
        return value


def legacy_transcription(identity: str, track_sid: str, segment_id: str, text: str) -> rtc.Transcription:
    """One final segment, as livekit-agents' `_ParticipantLegacyTranscriptionOutput` sends it
    (no timing: start and end 0, no language)."""
    segment = rtc.TranscriptionSegment(id=segment_id, text=text, start_time=0, end_time=0, final=True, language="")
    return rtc.Transcription(participant_identity=identity, track_sid=track_sid, segments=[segment])
