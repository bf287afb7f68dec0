"""AWS for the tests: moto's server (a third-party AWS emulator) on a free loopback port.

moto keeps what it is sent in this process, so a test reads what SES "delivered" and what
Secrets Manager holds from moto's own backends, not from our code.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

# The credentials and region every test client and every process under test uses.
AWS_REGION = "us-east-1"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": AWS_REGION,
    "AWS_DEFAULT_REGION": AWS_REGION,
}


def start_moto() -> tuple[Any, str]:
    """A started ``ThreadedMotoServer`` and its base URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def moto_session() -> Iterator[str]:
    """For a session fixture: moto's base URL while the session runs."""
    server, url = start_moto()
    try:
        yield url
    finally:
        server.stop()


def client(service: str, url: str) -> Any:
    """A boto3 client of ``service`` talking to moto at ``url`` directly (no proxy)."""
    import boto3

    return boto3.client(
        service,
        region_name=AWS_REGION,
        endpoint_url=url,
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
    )


# -- SES in moto ---------------------------------------------------------------------------


def ses_backend() -> Any:
    """moto's SES backend of the tests' account and region: SESv2 keeps its messages there."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ses.models import ses_backends

    return ses_backends[DEFAULT_ACCOUNT_ID][AWS_REGION]


def ses_sent_messages() -> list[Any]:
    """Every message moto accepted for sending (plain and templated), oldest first."""
    return list(ses_backend().sent_messages)


def ses_message_tags(message: Any) -> dict[str, str]:
    """The email tags a message was sent with (kept by :func:`install_sesv2_send_extensions`)."""
    return {tag["Name"]: tag["Value"] for tag in getattr(message, "tags", None) or []}


def verify_ses_sender(url: str, address: str) -> None:
    """Verify ``address`` as a sender in moto (SES refuses unverified senders)."""
    client("ses", url).verify_email_identity(EmailAddress=address)


def create_ses_template(url: str, name: str, subject: str, text: str) -> None:
    """An SES template in moto (moto's SESv2 has no template API; its v1 one is shared)."""
    ses = client("ses", url)
    if name not in {t["Name"] for t in ses.list_templates()["TemplatesMetadata"]}:
        ses.create_template(
            Template={"TemplateName": name, "SubjectPart": subject, "TextPart": text}
        )


def install_sesv2_send_extensions() -> None:
    """Fill two gaps of moto's SESv2 ``SendEmail`` (moto 5.2), in this process's moto server.

    moto drops the request's ``EmailTags`` and answers a ``Content.Template`` send with
    NotImplementedError. Wrapped: a template send goes to moto's own v1 templated send (which
    checks the sender is verified and the template exists, and keeps the message), and the
    message moto keeps gets the request's tags as ``tags``. Plain sends still run moto's code.
    """
    import json

    from moto.sesv2.responses import SESV2Response

    if getattr(SESV2Response.send_email, "keeps_tags", False):
        return
    original = SESV2Response.send_email

    def send_email(self: Any) -> str:
        params = json.loads(self.body)
        content = params.get("Content") or {}
        backend = self.sesv2_backend.core_backend
        if "Template" in content:
            template = content["Template"]
            message = backend.send_templated_email(
                params.get("FromEmailAddress"),
                template.get("TemplateName"),
                template.get("TemplateData") or "{}",
                params.get("Destination") or {},
            )
            answer = json.dumps({"MessageId": message.id})
        else:
            answer = original(self)
            message_id = json.loads(answer)["MessageId"]
            message = next(m for m in reversed(backend.sent_messages) if m.id == message_id)
        message.tags = list(params.get("EmailTags") or [])
        return answer

    send_email.keeps_tags = True  # type: ignore[attr-defined]
    SESV2Response.send_email = send_email  # type: ignore[method-assign]
