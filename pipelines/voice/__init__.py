"""The duplex voice pipeline: VAD, end of turn, incremental ASR, brain (endpoint or local LM), TTS."""

from streamserve.pipelines.voice.pipeline import VoiceParams, VoicePipeline

__all__ = ["VoiceParams", "VoicePipeline"]
