"""The IVR script: keys and words, TwiML per branch, language fallback."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pytest

from herald_contracts import OutboundVoice
from herald_voice_sender.calling import VoiceCalling
from herald_voice_sender.domain import ivr


@pytest.mark.parametrize(
    ("digits", "speech", "choice"),
    [
        ("1", "", "confirm"),
        ("2", "", "agent"),
        ("9", "", "stop"),
        ("*", "", "repeat"),
        ("", "Yes please", "confirm"),
        ("", "an agent.", "agent"),
        ("", "stop", "stop"),
        ("", "mumble", "repeat"),
        ("", "我要转人工", "agent"),
        ("", "确认", "confirm"),
        ("", "停止", "stop"),
    ],
)
def test_interpret(digits: str, speech: str, choice: str) -> None:
    assert ivr.interpret(digits=digits, speech=speech) == choice


@pytest.mark.parametrize(
    ("language", "speech", "choice"),
    [
        # Transcripts carry punctuation, and a spoken number comes as digits.
        ("en-US", "Stop!", "stop"),
        ("en-US", "Yes!", "confirm"),
        ("en-GB", "Agent?", "agent"),
        ("en-US", "1.", "confirm"),
        ("en-US", "2", "agent"),
        ("en-US", "9", "stop"),
        ("en-US", "Nine.", "stop"),
        # An opt-out keyword as an SMS knows it, and a stop anywhere wins.
        ("en-US", "Unsubscribe.", "stop"),
        ("en-US", "Yes, stop calling me.", "stop"),
        # Cancel or end said in a sentence is about the appointment as likely as the calls.
        ("en-GB", "I want to cancel", "repeat"),
        ("en-GB", "Can you cancel?", "repeat"),
        ("en-US", "Cancel.", "stop"),
        # The prompts' languages, accents or none.
        ("fr-FR", "Arrêtez.", "stop"),
        ("fr-FR", "Oui, je confirme.", "confirm"),
        ("fr-FR", "Je veux un conseiller.", "agent"),  # "un" is no 1
        ("fr-FR", "Neuf", "stop"),
        ("de-DE", "Ja, bestätigen.", "confirm"),
        ("de-DE", "Mitarbeiter, bitte!", "agent"),
        ("de-DE", "Stopp!", "stop"),
        ("de-DE", "bestatigen", "confirm"),
        ("es-ES", "Sí, confirmo.", "confirm"),
        ("es-MX", "¿Agente?", "agent"),
        ("es-ES", "¡Basta!", "stop"),
        ("es-ES", "Dos.", "agent"),
        ("zh-CN", "我要转人工。", "agent"),
        # English is understood in every call; another language's words only in its own.
        ("fr-FR", "Stop.", "stop"),
        ("en-US", "Ja.", "repeat"),
        ("pt-BR", "Confirm.", "confirm"),
        ("en-US", "Hmm?", "repeat"),
    ],
)
def test_spoken_answers(language: str, speech: str, choice: str) -> None:
    assert ivr.interpret(speech=speech, language=language) == choice


def test_every_prompt_language_has_hints() -> None:
    assert set(ivr.HINTS) == set(ivr.PROMPTS)
    assert set(ivr.SPEECH) == set(ivr.PROMPTS) - {"zh"}  # Chinese: SPEECH_PHRASES


@pytest.mark.parametrize(
    ("language", "hints"), [("fr-FR", "confirmer"), ("de-DE", "bestätigen"), ("es-ES", "agente")]
)
def test_the_menu_listens_for_the_words_of_its_language(language: str, hints: str) -> None:
    xml = ivr.menu(say="x", language=language, gather_url="g", again_url=None)
    gather = ET.fromstring(xml).find("Gather")  # noqa: S314 - our own output
    assert gather is not None and gather.get("language") == language
    assert hints in (gather.get("hints") or "")


def test_menu_says_the_message_in_language_and_gathers() -> None:
    xml = ivr.menu(
        say="Ihr Techniker kommt morgen.",
        language="de-DE",
        gather_url="https://h/g?mid=m",
        again_url="https://h/t?mid=m&again=1",
    )
    root = ET.fromstring(xml)  # noqa: S314 - our own output
    gather = root.find("Gather")
    assert gather is not None and gather.get("action") == "https://h/g?mid=m"
    assert gather.get("input") == "dtmf speech" and gather.get("numDigits") == "1"
    says = [s.text for s in gather.findall("Say")]
    assert says[0] == "Ihr Techniker kommt morgen." and "Drücken Sie 1" in (says[1] or "")
    assert all(s.get("language") == "de-DE" for s in gather.findall("Say"))
    assert root.find("Redirect") is not None


def test_second_pass_hangs_up_instead_of_looping() -> None:
    root = ET.fromstring(  # noqa: S314 - our own output
        ivr.menu(say="x", language="en-GB", gather_url="g", again_url=None)
    )
    assert root.find("Redirect") is None and root.find("Hangup") is not None


def test_agent_dials_the_contact_centre_and_unknown_language_falls_back() -> None:
    xml = ivr.after("agent", language="pt-BR", contact_number="+15005550009", again_url="a")
    assert "<Dial>+15005550009</Dial>" in xml and "Connecting you" in xml


def _says(xml: str) -> list[tuple[str, str | None]]:
    root = ET.fromstring(xml)  # noqa: S314 - our own output
    return [(s.text or "", s.get("language")) for s in root.iter("Say")]


def test_english_fallback_prompts_are_said_by_an_english_voice() -> None:
    # No Portuguese prompts: the case text keeps the call's voice, the English menu gets an
    # English one, and the answer to it is listened for in English.
    say = "Seu técnico chega amanhã."
    xml = ivr.menu(say=say, language="pt-BR", gather_url="g", again_url=None)
    gather = ET.fromstring(xml).find("Gather")  # noqa: S314 - our own output
    assert gather is not None and gather.get("language") == "en-US"
    assert "confirm" in (gather.get("hints") or "")
    says = _says(xml)
    assert says[0] == (say, "pt-BR")
    assert all(lang == "en-US" for _, lang in says[1:]) and "Press 1" in says[1][0]
    voicemail = _says(ivr.voicemail(say="Caso", language="pt-BR", contact_number="+15005550009"))
    assert voicemail[0] == ("Caso", "pt-BR")
    assert all(lang == "en-US" for _, lang in voicemail[1:])
    for choice in ("confirm", "agent", "stop"):
        xml = ivr.after(choice, language="pt-BR", contact_number="+15005550009", again_url="a")
        assert {lang for _, lang in _says(xml)} == {"en-US"}
    assert _says(ivr.callback(language="pt-BR", contact_number="+15005550009"))[0][1] == "en-US"


def test_translated_prompts_keep_the_calls_voice() -> None:
    xml = ivr.after("stop", language="es-MX", contact_number="+15005550009", again_url="a")
    assert _says(xml) == [(ivr.PROMPTS["es"].stopped, "es-MX")]


def test_voicemail_has_no_menu() -> None:
    xml = ivr.voicemail(say="Case resolved.", language="en", contact_number="+15005550009")
    assert "<Gather" not in xml and "Case resolved." in xml and "<Hangup" in xml


@pytest.mark.parametrize(
    ("tag", "spoken"),
    [
        ("zh", "zh-CN"),
        ("zh-Hant", "zh-TW"),
        ("zh-CN", "zh-CN"),
        ("en", "en-US"),
        ("en-GB", "en-GB"),
        # A region says what a voice needs; the script is dropped (voices are not named by it).
        ("zh-Hant-TW", "zh-TW"),
        ("zh-Hans-CN", "zh-CN"),
        ("sr-Latn-RS", "sr-RS"),
        # Chinese has three voices: Hong Kong's and Macau's Cantonese is not Taiwan's Mandarin,
        # and a region no voice is named after is said by the voice of its script.
        ("zh-HK", "zh-HK"),
        ("zh-Hant-HK", "zh-HK"),
        ("zh-MO", "zh-HK"),
        ("yue", "zh-HK"),
        ("yue-Hant-HK", "zh-HK"),
        ("zh-TW", "zh-TW"),
        ("zh-SG", "zh-CN"),
        ("zh-Hant-SG", "zh-TW"),
    ],
)
def test_tts_language_adds_the_likeliest_region(tag: str, spoken: str) -> None:
    assert ivr.tts_language(tag) == spoken


@pytest.mark.parametrize(
    ("language", "spoken"),
    [("zh-Hant-TW", "zh-TW"), ("zh-Hant", "zh-TW"), ("fr-FR", "fr-FR")],
)
def test_a_call_is_said_in_a_language_text_to_speech_knows(language: str, spoken: str) -> None:
    msg = OutboundVoice(
        message_id="m1",
        request_id="r1",
        campaign_id="c",
        customer_id="c1",
        locale="zh-Hant",
        created_at=datetime(2026, 1, 12, tzinfo=UTC),
        to="+886912345678",
        say="繁體",
        language=language,
    )
    assert VoiceCalling.from_outbound(msg).language == spoken


def test_chinese_prompts_for_chinese_tags() -> None:
    assert ivr.prompts_for("zh-CN") is ivr.PROMPTS["zh"]
    assert ivr.prompts_for("zh-Hant-TW") is ivr.PROMPTS["zh"]


@pytest.mark.parametrize("script", [ivr.menu, ivr.voicemail])
def test_control_characters_in_the_message_leave_twiml_twilio_can_parse(script: object) -> None:
    say = "Order \x0c ready\x00 at\x1b 2\ufffe pm,\tgate\r\n4"
    if script is ivr.menu:
        xml = ivr.menu(say=say, language="en-GB", gather_url="g", again_url=None)
    else:
        xml = ivr.voicemail(say=say, language="en-GB", contact_number="+15005550009")
    root = ET.fromstring(xml)  # noqa: S314 - our own output
    spoken = next(s.text or "" for s in root.iter("Say"))
    assert spoken.split() == ["Order", "ready", "at", "2", "pm,", "gate", "4"]
    assert "\t" in spoken
