import solutions


def test_exercise_1_names_allowed_devices():
    msg = solutions.exercise_1()
    assert "'gpu'" in msg and "'auto'" in msg and "'cpu'" in msg and "'cuda'" in msg


def test_exercise_2_times_every_size():
    times = solutions.exercise_2(sizes=(16, 64))
    assert set(times) == {16, 64} and all(t > 0 for t in times.values())


def test_exercise_3_restores_a_deleted_file():
    assert solutions.exercise_3() is True
