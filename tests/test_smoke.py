from agency_data import DataLayer


async def test_health_ok(dl: DataLayer) -> None:
    report = await dl.health()
    assert report.status == "ok"
