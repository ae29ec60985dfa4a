# Fixtures live in plugin modules beside this file, one per real service the tests start.
pytest_plugins = ["pg_fixtures", "oss_fixtures", "alert_receiver"]
