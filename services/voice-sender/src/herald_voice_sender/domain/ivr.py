"""The IVR script: what the call says, what each key means, in the customer's language."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

from babel import Locale, UnknownLocaleError
from babel.core import get_global
from twilio.twiml.voice_response import VoiceResponse

from herald_contracts import keyword

Choice = Literal["confirm", "agent", "stop", "repeat"]

# What XML 1.0 does not allow in a document, even escaped: C0 controls other than tab, line
# feed and carriage return, lone surrogates, U+FFFE and U+FFFF.
NOT_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True)
class Prompts:
    """The fixed sentences of the script in one language."""

    menu: str
    voicemail: str
    confirmed: str
    connecting: str
    stopped: str
    goodbye: str
    callback: str


PROMPTS: dict[str, Prompts] = {
    "en": Prompts(
        menu="Press 1 to confirm. Press 2 to talk to an agent. Press 9 to stop these calls. "
        "Press star to hear this again.",
        voicemail="We will try to reach you again, or you can call us back.",
        confirmed="Thank you, that is confirmed. Goodbye.",
        connecting="Connecting you to an agent.",
        stopped="You will not receive these calls any more. Goodbye.",
        goodbye="Goodbye.",
        callback="You asked us to call you back. Connecting you to an agent.",
    ),
    "fr": Prompts(
        menu="Tapez 1 pour confirmer. Tapez 2 pour parler à un conseiller. Tapez 9 pour ne "
        "plus recevoir ces appels. Tapez étoile pour réécouter.",
        voicemail="Nous essaierons de vous rappeler, ou vous pouvez nous rappeler.",
        confirmed="Merci, c'est confirmé. Au revoir.",
        connecting="Nous vous mettons en relation avec un conseiller.",
        stopped="Vous ne recevrez plus ces appels. Au revoir.",
        goodbye="Au revoir.",
        callback="Vous avez demandé à être rappelé. Nous vous mettons en relation.",
    ),
    "de": Prompts(
        menu="Drücken Sie 1 zum Bestätigen. Drücken Sie 2 für einen Mitarbeiter. Drücken Sie 9, "
        "um keine Anrufe mehr zu erhalten. Drücken Sie Stern zum Wiederholen.",
        voicemail="Wir versuchen es erneut, oder rufen Sie uns zurück.",
        confirmed="Danke, das ist bestätigt. Auf Wiederhören.",
        connecting="Wir verbinden Sie mit einem Mitarbeiter.",
        stopped="Sie erhalten keine solchen Anrufe mehr. Auf Wiederhören.",
        goodbye="Auf Wiederhören.",
        callback="Sie haben um Rückruf gebeten. Wir verbinden Sie.",
    ),
    "es": Prompts(
        menu="Pulse 1 para confirmar. Pulse 2 para hablar con un agente. Pulse 9 para no recibir "
        "más llamadas. Pulse asterisco para repetir.",
        voicemail="Intentaremos llamarle de nuevo, o puede llamarnos.",
        confirmed="Gracias, queda confirmado. Adiós.",
        connecting="Le pasamos con un agente.",
        stopped="No recibirá más llamadas. Adiós.",
        goodbye="Adiós.",
        callback="Pidió que le llamáramos. Le pasamos con un agente.",
    ),
    "zh": Prompts(
        menu="确认请按1。转人工服务请按2。不再接听此类来电请按9。重听请按星号键。",
        voicemail="我们会再次与您联系，您也可以给我们回电。",  # noqa: RUF001 - Chinese punctuation
        confirmed="谢谢，已为您确认。再见。",  # noqa: RUF001 - Chinese punctuation
        connecting="正在为您转接人工服务。",
        stopped="您将不再收到此类来电。再见。",
        goodbye="再见。",
        callback="您请求我们回电。正在为您转接人工服务。",
    ),
}

# Spoken answers per prompt language (the keypad's options said as words, and the digits a
# recogniser writes for them). Compared folded (see `_fold`): case, accents and punctuation
# aside. Articles that double as numbers ("un" in French) are left out: "un conseiller" is no 1.
SPEECH: dict[str, dict[str, Choice]] = {
    "en": {
        "confirm": "confirm",
        "yes": "confirm",
        "one": "confirm",
        "agent": "agent",
        "operator": "agent",
        "representative": "agent",
        "two": "agent",
        "stop": "stop",
        "nine": "stop",
    },
    "fr": {
        "confirmer": "confirm",
        "confirme": "confirm",
        "oui": "confirm",
        "conseiller": "agent",
        "conseillère": "agent",
        "agent": "agent",
        "opérateur": "agent",
        "deux": "agent",
        "arrêter": "stop",
        "arrêtez": "stop",
        "arrête": "stop",
        "stop": "stop",
        "neuf": "stop",
    },
    "de": {
        "bestätigen": "confirm",
        "bestätige": "confirm",
        "ja": "confirm",
        "eins": "confirm",
        "mitarbeiter": "agent",
        "mitarbeiterin": "agent",
        "berater": "agent",
        "agent": "agent",
        "zwei": "agent",
        "stopp": "stop",
        "stop": "stop",
        "aufhören": "stop",
        "abmelden": "stop",
        "neun": "stop",
    },
    "es": {
        "confirmar": "confirm",
        "confirmo": "confirm",
        "sí": "confirm",
        "uno": "confirm",
        "agente": "agent",
        "operador": "agent",
        "asesor": "agent",
        "dos": "agent",
        "parar": "stop",
        "pare": "stop",
        "detener": "stop",
        "basta": "stop",
        "stop": "stop",
        "nueve": "stop",
    },
}
# The keypad's options, as a recogniser writes a spoken number ("1." for "one").
SPOKEN_KEYS: dict[str, Choice] = {"1": "confirm", "2": "agent", "9": "stop"}
# Words of languages written without spaces, found anywhere in what was heard.
SPEECH_PHRASES: dict[str, Choice] = {
    "确认": "confirm",
    "是的": "confirm",
    "人工": "agent",
    "客服": "agent",
    "停止": "stop",
    "退订": "stop",
}
# What the recogniser is told to expect, per prompt language.
HINTS: dict[str, str] = {
    "en": "confirm, agent, stop",
    "fr": "confirmer, conseiller, arrêter",
    "de": "bestätigen, Mitarbeiter, stopp",
    "es": "confirmar, agente, parar",
    "zh": "确认, 人工, 停止",
}
# The voice of the English prompts said in a call whose language has none of its own.
FALLBACK_LANGUAGE = "en-US"


# Text-to-speech has three Chinese voices: Mandarin (zh-CN), Taiwanese Mandarin (zh-TW) and
# Cantonese (zh-HK), the language of Hong Kong and Macau (yue). Another region's Chinese is
# said by the voice of its script (Singapore's Simplified by zh-CN's): a tag such as zh-SG
# names no voice.
CANTONESE_REGIONS = frozenset({"HK", "MO"})


def tts_language(tag: str) -> str:
    """A BCP 47 tag as text-to-speech wants it, with a region: zh -> zh-CN, zh-Hant -> zh-TW,
    en -> en-US (the likeliest region, from CLDR through Babel); a tag that has a region is
    kept without its script (zh-Hant-TW -> zh-TW: voices are named by language and region), and
    one CLDR does not know is kept. Chinese is said by one of its three voices: zh-HK (Cantonese)
    for Hong Kong, Macau and yue, else zh-TW for Traditional, else zh-CN."""
    if tag.split("-")[0].lower() in ("zh", "yue"):
        return _chinese_voice(tag)
    try:
        loc = Locale.parse(tag, sep="-")
    except (ValueError, UnknownLocaleError):
        return tag
    if loc.territory:
        parts = tag.split("-")
        if len(parts) > 2 and len(parts[1]) == 4 and parts[1].isalpha():
            return "-".join([parts[0], *parts[2:]])  # the script subtag dropped
        return tag
    subtags = get_global("likely_subtags")
    tried = [f"{loc.language}_{loc.script}", f"und_{loc.script}"] if loc.script else []
    found = next((subtags[k] for k in [*tried, loc.language] if k in subtags), loc.language)
    likely = Locale.parse(found)
    return f"{loc.language}-{likely.territory}" if likely.territory else tag


def _chinese_voice(tag: str) -> str:
    """The Chinese voice of a zh or yue tag: Cantonese for yue or a Cantonese region, else the
    voice of its script (named, else the likeliest for its region: zh-TW is Traditional)."""
    language, *rest = tag.split("-")
    region = next((p.upper() for p in rest if len(p) == 2 and p.isalpha()), None)
    if language.lower() == "yue" or region in CANTONESE_REGIONS:
        return "zh-HK"
    script = next((p.title() for p in rest if len(p) == 4 and p.isalpha()), None)
    if script is None and region is not None:
        likely = get_global("likely_subtags").get(f"zh_{region}", "")
        script = "Hant" if "_Hant" in likely else None
    return "zh-TW" if script == "Hant" else "zh-CN"


def prompts_for(language: str) -> Prompts:
    """The prompts of a BCP 47 language (en-GB -> en); English when not translated."""
    return PROMPTS.get(language.split("-")[0].lower(), PROMPTS["en"])


def prompt_language(language: str) -> str:
    """The language the prompts of a call are said (and answers to them heard) in: the call's
    own when its prompts exist, else en-US, the English fallback's (an English sentence said
    by a Portuguese voice is hard to follow, and the answer comes in English)."""
    return language if language.split("-")[0].lower() in PROMPTS else FALLBACK_LANGUAGE


def _fold(text: str) -> str:
    """Text compared as words: width-folded (NFKC), case-folded, accents dropped, and every
    punctuation mark or symbol a space (a transcript says "Stop!", "Oui, confirmer.")."""
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).casefold())
    kept = (
        " " if unicodedata.category(c)[0] in "PS" else c
        for c in decomposed
        if not unicodedata.combining(c)
    )
    return "".join(kept)


def _words(language: str | None) -> dict[str, Choice]:
    """The spoken answers understood in a call: English (the fallback prompts' language, and
    words such as "stop" that callers say in any language) and the prompt language's; every
    language's when the call's is not known."""
    if language is None:
        tables = list(SPEECH.values())
    else:
        tables = [SPEECH["en"], SPEECH.get(language.split("-")[0].lower(), {})]
    return {_fold(word): choice for table in tables for word, choice in table.items()}


def interpret(*, digits: str = "", speech: str = "", language: str | None = None) -> Choice:
    """What the callee chose: 1 confirm, 2 agent, 9 stop; anything else repeats the menu.

    Speech in the call's language (`language`; every prompt language's when None): the keys'
    words or digits, and, as in an SMS, a whole answer that is an opt-out keyword (STOP,
    UNSUBSCRIBE, 退订, ...). A stop anywhere in the answer wins, as an opt-out must.
    """
    key = digits.strip()[:1]
    if key in SPOKEN_KEYS:
        return SPOKEN_KEYS[key]
    if keyword(speech) == "stop":
        return "stop"
    words = _words(language)
    heard = [words.get(word) or SPOKEN_KEYS.get(word) for word in _fold(speech).split()]
    heard += [choice for phrase, choice in SPEECH_PHRASES.items() if phrase in speech]
    if "stop" in heard:
        return "stop"
    return next((choice for choice in heard if choice is not None), "repeat")


def spoken(text: str) -> str:
    """Text from case data made fit for TwiML: ElementTree writes control characters as they
    are, and Twilio cannot parse a document that holds one (the call would fail)."""
    return NOT_XML.sub("", text)


def menu(*, say: str, language: str, gather_url: str, again_url: str | None) -> str:
    """Say the message, then gather one key or a word; after silence, once more then goodbye.

    The message is said in the call's language; the prompts, and the answer to them listened
    for, in the prompts' (see `prompt_language`)."""
    p, spoken_in = prompts_for(language), prompt_language(language)
    r = VoiceResponse()
    g = r.gather(
        input="dtmf speech",
        num_digits=1,
        action=gather_url,
        method="POST",
        timeout=6,
        language=spoken_in,
        hints=HINTS[spoken_in.split("-")[0].lower()],
    )
    g.say(spoken(say), language=language)
    g.say(p.menu, language=spoken_in)
    if again_url:
        r.redirect(again_url, method="POST")
    else:
        r.say(p.goodbye, language=spoken_in)
        r.hangup()
    return str(r)


def voicemail(*, say: str, language: str, contact_number: str) -> str:
    """What a machine hears: the message, how to reach us, then hang up (no menu)."""
    p, spoken_in = prompts_for(language), prompt_language(language)
    r = VoiceResponse()
    r.pause(length=1)
    r.say(spoken(say), language=language)
    r.say(p.voicemail, language=spoken_in)
    if contact_number:
        r.say(" ".join(contact_number.lstrip("+")), language=spoken_in)
    r.hangup()
    return str(r)


def after(choice: Choice, *, language: str, contact_number: str, again_url: str) -> str:
    """The TwiML answering a choice."""
    p, spoken_in = prompts_for(language), prompt_language(language)
    r = VoiceResponse()
    if choice == "confirm":
        r.say(p.confirmed, language=spoken_in)
        r.hangup()
    elif choice == "agent":
        r.say(p.connecting, language=spoken_in)
        r.dial(contact_number)
    elif choice == "stop":
        r.say(p.stopped, language=spoken_in)
        r.hangup()
    else:
        r.redirect(again_url, method="POST")
    return str(r)


def callback(*, language: str, contact_number: str) -> str:
    """A call the customer asked for: straight to an agent."""
    r = VoiceResponse()
    r.say(prompts_for(language).callback, language=prompt_language(language))
    r.dial(contact_number)
    return str(r)
