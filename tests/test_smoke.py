def test_extrato_inicial(http):
    r = http.extrato(1)
    assert r.status == 200
    assert r.json["saldo"]["total"] == 0
