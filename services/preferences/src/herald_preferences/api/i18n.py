"""The preference centre's words in each supported locale; Babel picks the locale."""

# ruff: noqa: RUF001 - Chinese text uses full-width punctuation on purpose.

from __future__ import annotations

from babel import Locale, negotiate_locale

SUPPORTED = ("en", "zh_CN")

MESSAGES: dict[str, dict[str, str]] = {
    "en": {
        "title": "Your contact preferences",
        "intro": "Choose how we contact you about your case, and when we must not.",
        "ranking": "How should we reach you? First choice first.",
        "choice": "Choice {n}",
        "none": "(none)",
        "quiet": "Quiet hours (your local time, {zone})",
        "quiet_from": "From",
        "quiet_to": "to",
        "quiet_help": "Leave both empty for no quiet hours of your own.",
        "topics": "What may we contact you about?",
        "save": "Save my preferences",
        "saved": "Your preferences are saved.",
        "error": "Please check: {detail}",
        "stopped": "You replied STOP on {channel}, so we send nothing there. Ticking a box for it "
        "starts messages again, along with the choices you made before the STOP; until then "
        "they are kept as they were.",
        "sms": "Text message (SMS)",
        "email": "Email",
        "voice": "Phone call",
        "service-updates": "Updates about my case",
        "appointments": "Appointments",
        "billing": "Billing",
        "marketing": "Offers and news",
        "expired": "This link has expired. Ask us for a new one.",
        "invalid": "This link is not valid.",
        "gone": "There is nothing to show for this link.",
    },
    "zh_CN": {
        "title": "您的联系偏好",
        "intro": "请选择我们如何就您的案件联系您，以及何时不要打扰您。",
        "ranking": "我们应如何联系您？请按优先顺序选择。",
        "choice": "第{n}选择",
        "none": "（无）",
        "quiet": "免打扰时段（您的当地时间，{zone}）",
        "quiet_from": "从",
        "quiet_to": "到",
        "quiet_help": "两项都留空表示不设免打扰时段。",
        "topics": "我们可以就哪些事项联系您？",
        "save": "保存我的偏好",
        "saved": "您的偏好已保存。",
        "error": "请检查：{detail}",
        "stopped": "您曾在{channel}回复退订，我们不会通过该渠道发送任何消息。勾选该渠道将重新开始"
        "接收消息，并恢复您退订前的选择；在此之前，这些选择保持不变。",
        "sms": "短信",
        "email": "电子邮件",
        "voice": "电话",
        "service-updates": "案件进展通知",
        "appointments": "预约",
        "billing": "账单",
        "marketing": "优惠与资讯",
        "expired": "此链接已过期，请向我们索取新链接。",
        "invalid": "此链接无效。",
        "gone": "此链接没有可显示的内容。",
    },
}


def pick_locale(*preferences: str | None) -> str:
    """The supported locale closest to the customer's own, then the browser's; 'en' last."""
    wanted = []
    for pref in preferences:
        if not pref:
            continue
        for part in pref.split(","):
            tag = part.split(";")[0].strip()
            if not tag:
                continue
            try:
                loc = Locale.parse(tag, sep="-")
            except (ValueError, TypeError):
                continue
            if (
                loc.language == "zh"
                and loc.territory in (None, "CN", "SG")
                and (loc.script in (None, "Hans"))
            ):
                wanted.append("zh_CN")
            wanted.append(str(loc))
            wanted.append(loc.language)
    return negotiate_locale(wanted, list(SUPPORTED)) or "en"


def html_lang(locale: str) -> str:
    """BCP 47 tag for the page's lang attribute."""
    return Locale.parse(locale).language + ("-CN" if locale == "zh_CN" else "")


def words(locale: str) -> dict[str, str]:
    """The message table of a supported locale."""
    return MESSAGES.get(locale, MESSAGES["en"])
