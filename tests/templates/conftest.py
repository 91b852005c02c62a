import pytest


@pytest.fixture
def weather_tool() -> dict:
    return {'type': 'function', 'function': {
        'name': 'get_weather', 'description': 'Get the weather in a city.',
        'parameters': {'type': 'object', 'properties': {'city': {'type': 'string'}}, 'required': ['city']}}}
