"""Command-line overrides: a misspelt option or key gets one line with a suggestion."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("mode=coord_median", "no mode option 'coord_median'; did you mean coord-median?"),
        ("approch=mols", "unknown config key 'approch'; did you mean approach?"),
        ("mode.num_bukets=3", "unknown config key 'mode.num_bukets'; did you mean num_buckets?"),
        ("attack=zzz", "no attack option 'zzz'; available: alie, alie_original, backdoor,"),
    ],
)
def test_a_misspelt_option_or_key_gets_a_suggestion_and_no_schema_entries(override, message):
    from byzshield.config.overrides import UsageError, compose

    with pytest.raises(UsageError) as exc:
        compose("config", [override])
    assert str(exc.value).startswith(message) and "_schema" not in str(exc.value)
