"""Task metrics score what users mean by right: parsed JSON, per-field accuracy, normalized text."""

from kit.evaluate.metrics import contains, exact_match, extract_json, json_fields, json_valid, schema_validator

GOLD = {"tool": "set_timer", "arguments": {"duration_seconds": 300}}


def test_json_is_found_in_fences_and_surrounding_text():
    assert extract_json('Sure!\n```json\n{"a": 1}\n```') == {"a": 1}
    assert extract_json('The call is {"a": [1, 2]} done') == {"a": [1, 2]}
    assert json_valid("no json here", GOLD) == 0.0


def test_exact_match_compares_parsed_json_not_spacing_or_key_order():
    prediction = '{"arguments": {"duration_seconds": 300},   "tool": "set_timer"}'
    assert exact_match(prediction, GOLD, "json") == 1.0
    assert exact_match('{"tool": "set_timer", "arguments": {"duration_seconds": 30}}', GOLD, "json") == 0.0
    assert exact_match("SELECT  count(*) FROM t;", "select count(*) from t", "sql") == 1.0


def test_json_fields_scores_each_top_level_key():
    fields = json_fields('{"tool": "set_timer", "arguments": {"duration_seconds": 30}}', GOLD)
    assert fields == {"tool": 1.0, "arguments": 0.0}
    assert json_fields("garbage", GOLD) == {"tool": 0.0, "arguments": 0.0}


def test_schema_validity_and_contains():
    valid = schema_validator({"type": "object", "required": ["tool"]})
    assert valid('{"tool": "x"}') == 1.0 and valid('{"x": 1}') == 0.0 and valid("nope") == 0.0
    assert contains("The answer is Paris.", "paris") == 1.0
