"""The customer status page's words, per locale (en, zh-CN); dates are formatted with Babel."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from babel import Locale, UnknownLocaleError
from babel.dates import format_datetime, get_timezone

TEXT: dict[str, dict[str, str]] = {
    "en": {
        "title": "Your case",
        "case": "Case",
        "status": "Status",
        "summary": "Summary",
        "next_step": "Next step",
        "eta": "Expected by",
        "assigned_team": "Team",
        "assigned_engineer": "Engineer",
        "appointment": "Appointment",
        "updated": "Last updated",
        "timeline": "What has happened",
        "confirm": "Confirm",
        "reschedule": "Ask to reschedule",
        "callback": "Call me back",
        "callback_number": "Number to call you on",
        "thanks": "Thank you, we have your answer.",
        "event": "Update",
        "contact": "We contacted you",
        "reply": "Your answer",
        "intent.confirm": "confirmed",
        "intent.reschedule": "asked to reschedule",
        "intent.callback": "asked for a call back",
        "channel.sms": "by text message",
        "channel.email": "by email",
        "channel.voice": "by phone",
        "channel.web": "on this page",
        "bad_number": "Please give a phone number we can call.",
        "bad_number_type": "Please give a mobile or landline number: we do not call back "
        "premium-rate, shared-cost, personal, pager or other special numbers.",
        "callback_limit": "You have asked us to call you back as many times as we can take "
        "today. We will call you; if you still need us, ask again tomorrow.",
        "expired": "This link has expired. Ask us for a new one.",
        "invalid": "This link is not valid.",
        "gone": "There is nothing to show for this link.",
        "unavailable": "This page is not available right now. Please try again later.",
        "refused": "We could not take that answer. Please open the page again and retry.",
    },
    "zh-CN": {
        "title": "您的服务单",
        "case": "服务单",
        "status": "状态",
        "summary": "概要",
        "next_step": "下一步",
        "eta": "预计完成",
        "assigned_team": "负责团队",
        "assigned_engineer": "工程师",
        "appointment": "预约",
        "updated": "最后更新",
        "timeline": "处理记录",
        "confirm": "确认",
        "reschedule": "申请改期",
        "callback": "请给我回电",
        "callback_number": "回电号码",
        "thanks": "谢谢，我们已收到您的回复。",  # noqa: RUF001 - Chinese punctuation
        "event": "更新",
        "contact": "我们已联系您",
        "reply": "您的回复",
        "intent.confirm": "已确认",
        "intent.reschedule": "申请改期",
        "intent.callback": "请求回电",
        "channel.sms": "短信",
        "channel.email": "电子邮件",
        "channel.voice": "电话",
        "channel.web": "网页",
        "bad_number": "请填写我们可以拨打的电话号码。",
        "bad_number_type": "请填写手机或固定电话号码：我们不回拨付费、分摊费用、个人转接、"  # noqa: RUF001
        "寻呼等特殊号码。",
        "callback_limit": "您今天的回电请求已达上限。我们会给您回电；如仍需联系，请明天再提出。",  # noqa: RUF001
        "expired": "此链接已过期，请向我们索取新链接。",  # noqa: RUF001
        "invalid": "此链接无效。",
        "gone": "此链接没有可显示的内容。",
        "unavailable": "此页面暂时无法使用，请稍后再试。",  # noqa: RUF001
        "refused": "我们无法接收该回复，请重新打开页面后再试。",  # noqa: RUF001
    },
}
BUTTONS = ("confirm", "reschedule", "callback")


def pick_locale(wanted: str | None, accept_language: str | None = None) -> str:
    """The best locale (BCP 47 tag) for what the link or the browser asks, in a language the
    page speaks; its region still shapes dates (en-GB writes 25 Nov, en-US Nov 25)."""
    candidates = [wanted] if wanted else []
    if accept_language:
        candidates += [part.split(";")[0].strip() for part in accept_language.split(",")]
    for cand in candidates:
        if not cand:
            continue
        try:
            loc = Locale.parse(cand.replace("-", "_"))
        except (ValueError, UnknownLocaleError):
            continue
        if loc.language == "zh":
            return "zh-CN"
        if loc.language == "en":
            return f"en-{loc.territory}" if loc.territory else "en"
    return "en"


def words(locale: str) -> dict[str, str]:
    """The page's words for a locale: by language, English when the page doesn't speak it."""
    if locale in TEXT:
        return TEXT[locale]
    return TEXT["zh-CN"] if locale.startswith("zh") else TEXT["en"]


def page_zone(wanted: Any) -> str:
    """The time zone the page writes times in: the link's (an IANA name), UTC for a link that
    names none (signed before links carried it) or one Babel does not know."""
    if isinstance(wanted, str) and wanted:
        try:
            get_timezone(wanted)
        except (LookupError, ValueError):
            return "UTC"
        return wanted
    return "UTC"


def when(value: Any, locale: str, time_zone: str = "UTC") -> str:
    """A date and time as the customer's locale writes it, in their time zone, naming the zone
    (a time without one is read in the reader's own zone and misleads)."""
    if not isinstance(value, datetime):
        return ""
    shown = format_datetime(
        value, "medium", tzinfo=get_timezone(time_zone), locale=locale.replace("-", "_")
    )
    return f"{shown} ({time_zone})"
