from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from agent.runtime import Agent

from ..deps import get_agent
from ..models import EngineOut, VoiceOut

router = APIRouter(tags=["voices"])


@router.get("/v1/voices", response_model=list[VoiceOut], response_model_exclude_none=True)
def list_voices(language: str | None = Query(None, max_length=35, description="language prefix, e.g. en, zh, es-419"),
                agent: Agent = Depends(get_agent)) -> list[dict]:
    return [v.public() for v in agent.voices.voices(language)]


@router.get("/v1/engines", response_model=list[EngineOut])
def list_engines(agent: Agent = Depends(get_agent)) -> list[EngineOut]:
    return [EngineOut(name=e.name, available=e.available, reason=e.unavailable_reason,
                      voices=len(e.voices()) if e.available else 0) for e in agent.engines]
