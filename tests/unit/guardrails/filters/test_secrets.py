"""The secrets filter: key formats, assignments, private keys, options and holdback."""

from __future__ import annotations

import pytest

from gatewayd.config.schema import SecretsFilterConfig
from gatewayd.guardrails.filters.secrets import ENTITIES, SecretsFilter

SECRETS = SecretsFilter(SecretsFilterConfig(name="secrets"))
# Synthetic: random-looking bodies in each vendor's published shape.
BODY = "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"
ANTHROPIC = f"sk-ant-api03-{BODY}{BODY}{BODY}AA"
OPENAI = f"sk-proj-{BODY}_{BODY}-{BODY}"
PEM = (
    "-----BEGIN EC PRIVATE KEY-----\n"
    "MHcCAQEEIIrYSSNQFaA2Hwf1duRSxKtLYX5CB04fSeQ6tF1aY/PuoAoGCCqGSM49\n"
    "AwEHoUQDQgAEPR3tU2Fta9ktY+6P9G0cWO+0kETA6SOs38SAvp23LAxnfljkAhNA\n"
    "-----END EC PRIVATE KEY-----"
)


def found(text: str, flt: SecretsFilter = SECRETS) -> list[tuple[str, str]]:
    """(entity, matched text) for every span, in order."""
    return [(s.entity, text[s.start : s.end]) for s in flt.scan(text)]


@pytest.mark.parametrize(
    ("entity", "value"),
    [
        ("AWS_ACCESS_KEY", "AKIAIOSFODNN7EXAMPLE"),
        ("AWS_ACCESS_KEY", "ASIAY34FZKBOKMUTVV7A"),
        ("GITHUB_TOKEN", "ghp_" + BODY + "a1B2"),
        ("GITHUB_TOKEN", "github_pat_11ABCDEFG0" + BODY + "_" + BODY + BODY),
        ("OPENAI_API_KEY", OPENAI),
        ("OPENAI_API_KEY", "sk-" + BODY[:20] + "T3BlbkFJ" + BODY[:20]),
        ("ANTHROPIC_API_KEY", ANTHROPIC),
        ("SLACK_TOKEN", "xoxb-123456789012-1234567890123-" + BODY[:24]),
        ("STRIPE_KEY", "sk_live_" + BODY[:24]),
        ("STRIPE_KEY", "rk_test_" + BODY[:24]),
        ("GOOGLE_API_KEY", "AIza" + BODY + "_-a"),
        ("JWT", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0." + BODY[:43]),
        # {"alg":"none","typ":"JWT"}: unsigned, nothing after the last dot.
        ("JWT", "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiIxMjM0NTY3ODkwIn0."),
        ("AWS_ACCESS_KEY", "ABIAY34FZKBOKMUTVV7A"),
        ("AWS_ACCESS_KEY", "ACCAY34FZKBOKMUTVV7A"),
        ("AWS_BEDROCK_API_KEY", "ABSK" + BODY + BODY + "=="),
        ("AWS_BEDROCK_API_KEY", "bedrock-api-key-" + BODY + BODY),
        ("SLACK_TOKEN", "xapp-1-A0123456789-1234567890123-" + BODY[:24].lower()),
        ("SLACK_TOKEN", "xoxe.xoxp-1-" + BODY[:40]),
        ("SLACK_TOKEN", "xoxe-1-" + BODY[:40]),
        ("SLACK_WEBHOOK_URL", "hooks.slack.com/services/T0A1B2C3D/B4E5F6G7H/" + BODY[:24]),
        ("PRIVATE_KEY", PEM),
    ],
)
def test_each_secret_format_is_found_whole(entity: str, value: str) -> None:
    """Every token shape is found inside prose, its span exactly the token."""
    assert found(f"here: {value}. done") == [(entity, value)]


def test_a_known_token_in_an_authorization_header_keeps_its_own_entity() -> None:
    """`Bearer sk-...` is an OPENAI_API_KEY, not a PASSWORD over the same characters."""
    assert found(f"Authorization: Bearer {OPENAI}") == [("OPENAI_API_KEY", OPENAI)]


def test_anthropic_keys_are_not_openai_keys() -> None:
    """An sk-ant- key is reported once, as ANTHROPIC_API_KEY."""
    assert found(ANTHROPIC) == [("ANTHROPIC_API_KEY", ANTHROPIC)]


def test_a_private_key_cut_short_still_counts() -> None:
    """Without its END line the block is its header and the base64 lines after it."""
    head = PEM.split("\n-----END")[0]
    assert found(head + "\n\nand then prose") == [("PRIVATE_KEY", head)]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('password = "hunter2"', "hunter2"),
        ("export DB_PASSWORD=s3cr3t!x", "s3cr3t!x"),
        ("passwd: Tr0ub4dor&3.", "Tr0ub4dor&3"),
        ("'secret': 'correct horse battery staple'", "correct horse battery staple"),
        ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", None),
        ("my password is Winter2024!", "Winter2024!"),
        ("postgres://app:Xk9pL2mQ@db.example.com/app", "Xk9pL2mQ"),
        ('dbPassword = "S3cr3t!pass"', "S3cr3t!pass"),
        ("clientSecret: Xk9#mP2$vL", "Xk9#mP2$vL"),
        ('mySecretString = "Tr0ub4dor&3"', "Tr0ub4dor&3"),
        ("mypassword=hunter22", "hunter22"),
        ('creds = "admin:Hunter2!x"', "admin:Hunter2!x"),
        ('{"credentials": "p4ssw0rd-Pr0d-99"}', "p4ssw0rd-Pr0d-99"),
        ('props.setProperty("API_TOKEN", "tok_9f8e7d6c5b4a");', "tok_9f8e7d6c5b4a"),
        ("<apiToken>a8f9e7d6c5b4a3f2</apiToken>", "a8f9e7d6c5b4a3f2"),
        ('getenv_or_default("api_token", "d3adb33f-cafe-4bad")', "d3adb33f-cafe-4bad"),
        ('password "Zx9!kL2#mQ";', "Zx9!kL2#mQ"),
        ("DB_PASSWORD ::= hunter2-Pr0d", "hunter2-Pr0d"),
        ("API_TOKEN ?= 8f7e6d5c4b3a2f1e", "8f7e6d5c4b3a2f1e"),
        ('if (api_key != "sk9f8e7d6c5b4a3") {', "sk9f8e7d6c5b4a3"),
        ("PASSWORD=p@ss;w0rd!", "p@ss;w0rd!"),
        ("config['db_password'] = 'Xk9#mP2$vL'", "Xk9#mP2$vL"),
        ("AUTH_KEY=Zx9-kL2-mQ7-pR4", "Zx9-kL2-mQ7-pR4"),
        ("pass: Xq8!kL2#mZ", "Xq8!kL2#mZ"),
        ('$db_pass = "Ph9!xT2#kL";', "Ph9!xT2#kL"),
        ("FYI my api key is ak_71Lq2Zm7Xv9Pb3", "ak_71Lq2Zm7Xv9Pb3"),
        ('"postgres://app:Xk9pL2mQ@db"', "Xk9pL2mQ"),
        (
            'curl -H "Authorization: Bearer 3f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c"',
            "3f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c",
        ),
        ("Authorization: Basic dXNlcjpQYXNzdzByZCE=", "dXNlcjpQYXNzdzByZCE="),
    ],
)
def test_passwords_cover_the_value_only(text: str, value: str | None) -> None:
    """An assigned secret is a PASSWORD span over the value, not the name."""
    expected = value or text.split("=", 1)[1]
    assert found(text) == [("PASSWORD", expected)]


@pytest.mark.parametrize(
    "text",
    [
        "Reset your password via the link.",
        "Your password: must be at least 8 characters",
        "password: ********",
        "password=${DB_PASSWORD}",
        "password = os.environ['DB_PASSWORD']",
        "self.password = password",
        '"password": "string"',
        "The password is required.",
        "tokens: 1500",
        "max_tokens=100000",
        'tokens "each word is a token"',
        'print("password", "is wrong")',
        "tokenizer = AutoTokenizer.from_pretrained('bert-base')",
        "the secretary: Jonathan",
        "the bearer of bad news, a Bearer token",
        "Basic authentication, basic aGVsbG8gd29ybGQ=",
        "passport: X1234567",
        "password: !vault |",
        "hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
        # A signed token cut before its signature is a fragment.
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.",
        "use sk-learn, a risk-free task-oriented sk-1234",
        "AKIA1234 ghp_short xoxb-abcdefghijklmnop AIzaShort eyJhbGciOiJIUzI1NiJ9",
        "pk_live_51H8abcdefghijklmnopqrstuv is publishable",
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n"
        "-----END PUBLIC KEY-----",
    ],
)
def test_near_misses_are_not_secrets(text: str) -> None:
    """Prose about passwords, placeholders, code and short look-alikes are left alone."""
    assert found(text) == []


def test_a_token_assigned_to_a_key_name_is_reported_as_the_token() -> None:
    """When a PASSWORD value is itself a known token, the more specific entity wins."""
    assert found(f'api_key = "{OPENAI}"') == [("OPENAI_API_KEY", OPENAI)]


def test_entities_selects_a_subset_and_typos_are_refused() -> None:
    """Only configured entities are reported; an unknown one fails at load."""
    jwt_only = SecretsFilter(SecretsFilterConfig(name="s", entities=("JWT",)))
    assert found("AKIAIOSFODNN7EXAMPLE password=hunter22", jwt_only) == []
    with pytest.raises(ValueError, match="AWS_KEY"):
        SecretsFilter(SecretsFilterConfig(name="s", entities=("AWS_KEY",)))
    assert "PASSWORD" in ENTITIES


@pytest.mark.parametrize(
    ("text", "held"),
    [
        ("my key is AKIAIOSF", "AKIAIOSF"),
        ("token ghp_abc", "ghp_abc"),
        ("use sk", "sk"),
        ('password = "correct hor', 'password = "correct hor'),
        ("-----BEGIN RSA PRIV", "-----BEGIN RSA PRIV"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIE", "-----BEGIN RSA PRIVATE KEY-----\nMIIE"),
        ("the answer is 42. ", ""),
        ("the password is set. ", ""),
    ],
)
def test_holdback_holds_only_what_could_still_match(text: str, held: str) -> None:
    """A token, key block or assignment still arriving is held; finished prose is not."""
    assert SECRETS.holdback(text) == len(held)


def test_a_finished_key_block_is_released() -> None:
    """Once the END line has arrived nothing of the block is held."""
    assert SECRETS.holdback(PEM + "\nok ") == 0
