"""Masking leaves alone what is no secret: constraint names, dates with offsets."""

from __future__ import annotations

from pathlib import Path

import pytest

from agency_data import DataLayer, DataLayerConfig
from agency_data.errors import Conflict
from agency_data.security.masking import masker_from_config
from tests.conftest import DatabaseDsn, make_config


async def test_a_constraint_name_is_not_masked_as_an_api_key(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async with DataLayer(make_config(database, redis_url, tmp_path)) as dl:
        await dl.admin.execute(
            "CREATE TABLE orders (id int CONSTRAINT pk_orders_customer_reference PRIMARY KEY)"
        )
        await dl.admin.execute("GRANT ALL ON orders TO PUBLIC")
        await dl.execute("INSERT INTO orders VALUES (1)")
        with pytest.raises(Conflict) as caught:
            await dl.execute("INSERT INTO orders VALUES (1)")
        assert "pk_orders_customer_reference" in str(caught.value)


def test_a_date_with_an_offset_is_not_a_phone_number() -> None:
    mask = masker_from_config(DataLayerConfig().masking).text
    line = "created Tue May 06 12:00:00 +0000 2024"
    assert mask(line) == line
