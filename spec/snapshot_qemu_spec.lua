-- spec/snapshot_qemu_spec.lua: `vdk snapshot`, `vdk info` and convert -l
-- against qemu-img 7.2 on the same images.
--   * qemu-img snapshot -l lists vdk's snapshots exactly as vdk does, and
--     vdk lists qemu-img's exactly as qemu-img does;
--   * qemu-img check is clean (no error, no leak) after every vdk create,
--     apply and delete, on several layouts;
--   * `qemu-img convert -l NAME` of each snapshot equals vdk's
--     `convert -l NAME`, whoever took the snapshot;
--   * qemu-img's messages and exit codes for the error cases.
local U = require "support.util"

local function vdk(...)
  return U.vdk_cmd(...)
end

local function must_vdk(...)
  local code, out, err = vdk(...)
  assert.equal(0, code, err)
  return out
end

local function check_clean(path, ctx)
  local ok, out = U.run("qemu-img check -f qcow2 %s", U.q(path))
  assert.is_true(ok, ctx .. ": " .. out)
  assert.truthy(out:find("No errors were found", 1, true), ctx .. ": " .. out)
  assert.falsy(out:find("leak", 1, true), ctx .. ": " .. out)
end

local function same_listing(path, ctx)
  local q = U.must("qemu-img snapshot -l %s", U.q(path))
  assert.equal(q, must_vdk("snapshot", "-l", path), ctx)
  assert.equal(U.must("qemu-img info %s", U.q(path)), must_vdk("info", path), ctx)
  assert.equal(U.must("qemu-img info --output=json %s", U.q(path)),
               must_vdk("info", "--output=json", path), ctx)
end

-- Every snapshot read by qemu-img and by vdk: the same bytes.
local function same_views(dir, path, names, ctx)
  for _, name in ipairs(names) do
    local q, v = dir .. "/q.raw", dir .. "/v.raw"
    os.remove(q)
    os.remove(v)
    U.must("qemu-img convert -l %s -O raw %s %s", U.q(name), U.q(path), U.q(q))
    must_vdk("convert", "-q", "-l", name, "-O", "raw", path, v)
    assert.is_true(U.read_file(q) == U.read_file(v), ctx .. ": snapshot " .. name .. " differs")
  end
end

-- A copy and its source read the same through qemu-img, snapshot by
-- snapshot (convert -l NAME) and for the current disk (compare).
local function copy_agrees(dir, src, dst, names, ctx)
  for _, name in ipairs(names) do
    local a, b = dir .. "/1.raw", dir .. "/2.raw"
    os.remove(a)
    os.remove(b)
    U.must("qemu-img convert -l %s -O raw %s %s", name, U.q(src), U.q(a))
    U.must("qemu-img convert -l %s -O raw %s %s", name, U.q(dst), U.q(b))
    assert.is_true(U.read_file(a) == U.read_file(b), ctx .. ", snapshot " .. name)
  end
  U.must("qemu-img compare -q %s %s", U.q(src), U.q(dst))
end

-- (More layouts: tests/c/test_snapshot_basic.c.)
local LAYOUTS = {
  { "64k clusters", "cluster_size=64k" },
  { "v2 (compat 0.10), 4k clusters", "compat=0.10,cluster_size=4k" },
  { "extended L2, lazy refcounts", "extended_l2=on,cluster_size=64k,lazy_refcounts=on" },
}

describe("vdk snapshot against qemu-img", function()
  for _, layout in ipairs(LAYOUTS) do
    it("creates, applies and deletes with qemu-img check clean (" .. layout[1] .. ")", function()
      local dir = U.tmpdir()
      local img = dir .. "/s.qcow2"
      U.must("qemu-img create -q -f qcow2 -o %s %s 32M", layout[2], U.q(img))
      U.must("qemu-io -c 'write -P 1 0 3M' -c 'write -P 2 10M 1M' %s", U.q(img))
      must_vdk("snapshot", "-c", "first", img)
      check_clean(img, "after create")
      U.must("qemu-io -c 'write -P 3 1M 1M' -c 'write -z 10M 512k' %s", U.q(img))
      U.must("qemu-img snapshot -c byqemu %s", U.q(img))
      U.must("qemu-io -c 'write -P 4 2M 2M' %s", U.q(img))
      must_vdk("snapshot", "-c", "second", img)
      check_clean(img, "after second create")
      same_listing(img, "three snapshots")
      same_views(dir, img, { "first", "byqemu", "second" }, "three snapshots")

      must_vdk("snapshot", "-a", "first", img)
      check_clean(img, "after apply")
      U.must("qemu-img convert -l first -O raw %s %s", U.q(img), U.q(dir .. "/first.raw"))
      U.must("qemu-img compare -q -f qcow2 -F raw %s %s", U.q(img), U.q(dir .. "/first.raw"))
      U.must("qemu-io -c 'write -P 5 0 64k' %s", U.q(img))
      check_clean(img, "after a write over the applied snapshot")
      same_views(dir, img, { "first", "byqemu", "second" }, "after apply")

      must_vdk("snapshot", "-d", "byqemu", img)
      check_clean(img, "after delete")
      same_listing(img, "after delete")
      same_views(dir, img, { "first", "second" }, "after delete")
      must_vdk("snapshot", "-d", "first", img)
      must_vdk("snapshot", "-d", "second", img)
      check_clean(img, "after deleting all")
      assert.equal("", must_vdk("snapshot", "-l", img))
    end)
  end

  it("assigns IDs as qemu-img does and lists qemu-img's snapshots identically", function()
    local dir = U.tmpdir()
    local a, b = dir .. "/a.qcow2", dir .. "/b.qcow2"
    U.must("qemu-img create -q -f qcow2 %s 16M", U.q(a))
    U.must("qemu-img create -q -f qcow2 %s 16M", U.q(b))
    for _, name in ipairs({ "one", "two", "three" }) do
      U.must("qemu-img snapshot -c %s %s", name, U.q(a))
      must_vdk("snapshot", "-c", name, b)
    end
    U.must("qemu-img snapshot -d two %s", U.q(a))
    must_vdk("snapshot", "-d", "two", b)
    U.must("qemu-img snapshot -c four %s", U.q(a))
    must_vdk("snapshot", "-c", "four", b)
    local function ids(text)
      local t = {}
      for id, name in text:gmatch("\n(%S+)%s+(%S+)%s+0 B") do t[#t + 1] = id .. "=" .. name end
      return table.concat(t, " ")
    end
    assert.equal("1=one 3=three 4=four", ids(U.must("qemu-img snapshot -l %s", U.q(a))))
    assert.equal("1=one 3=three 4=four", ids(U.must("qemu-img snapshot -l %s", U.q(b))))
    same_listing(a, "qemu-img's snapshots")
    same_listing(b, "vdk's snapshots")
    -- apply by ID, as qemu-img -a
    must_vdk("snapshot", "-a", "3", b)
    check_clean(b, "apply by ID")
  end)

  it("answers errors with qemu-img's messages and exit codes", function()
    local dir = U.tmpdir()
    local img, raw = dir .. "/e.qcow2", dir .. "/e.raw"
    U.must("qemu-img create -q -f qcow2 %s 16M", U.q(img))
    U.must("qemu-img create -q -f raw %s 1M", U.q(raw))
    must_vdk("snapshot", "-c", "dup", img)
    local cases = {
      { { "-c", "dup", img }, "Could not create snapshot 'dup': ", "already exists" },
      { { "-a", "nosuch", img }, "Could not apply snapshot 'nosuch': " },
      { { "-d", "nosuch", img }, "Could not delete snapshot 'nosuch': " },
      { { "-d", "1", img }, "Could not delete snapshot '1': " }, -- -d matches names only
      { { "-l", "-c", "x", img }, "Cannot mix '-l', '-a', '-c', '-d'" },
      { { "-l", img, img }, "Expecting one image file name" },
      { { "-c", "x", raw }, "Could not create snapshot 'x': ", "does not support internal snapshots" },
      { { "-l", dir .. "/missing" }, "Could not open" },
    }
    for _, case in ipairs(cases) do
      local code, out, err = vdk("snapshot", table.unpack(case[1]))
      assert.equal(1, code, table.concat(case[1], " "))
      assert.equal("", out)
      assert.truthy(err:find(case[2], 1, true), err)
      if case[3] then assert.truthy(err:find(case[3], 1, true), err) end
    end
    assert.equal("", must_vdk("snapshot", "-l", raw)) -- qemu-img: nothing, status 0
    assert.equal(U.must("qemu-img snapshot -l %s", U.q(img)), must_vdk("snapshot", img))
    check_clean(img, "after the failures")
  end)

  it("converts each snapshot as qemu-img convert -l does, in every -l form", function()
    local dir = U.tmpdir()
    local img = dir .. "/c.qcow2"
    U.must("qemu-img create -q -f qcow2 %s 8M", U.q(img))
    U.must("qemu-io -c 'write -P 7 0 1M' %s", U.q(img))
    must_vdk("snapshot", "-c", "s", img)
    U.must("qemu-io -c 'write -P 8 512k 1M' %s", U.q(img))
    local want = dir .. "/want.raw"
    U.must("qemu-img convert -l snapshot.name=s -O raw %s %s", U.q(img), U.q(want))
    for i, form in ipairs({ "s", "1", "snapshot.name=s", "snapshot.id=1",
                            "snapshot.id=1,snapshot.name=s" }) do
      local out = dir .. "/o" .. i .. ".raw"
      must_vdk("convert", "-q", "-l", form, "-O", "raw", img, out)
      assert.is_true(U.read_file(want) == U.read_file(out), form)
    end
    local code, _, err = vdk("convert", "-l", "snapshot.id=1,snapshot.name=t", "-O", "raw", img,
                             dir .. "/x.raw")
    assert.equal(1, code)
    assert.truthy(err:find("Failed to load snapshot", 1, true), err)
    -- and qemu-img reads what vdk converted to qcow2 the same way
    must_vdk("convert", "-q", "-l", "s", "-O", "qcow2", img, dir .. "/s.qcow2")
    U.must("qemu-img compare -q %s %s", U.q(dir .. "/s.qcow2"), U.q(want))
  end)

  it("keeps every snapshot in convert --keep-snapshots, sharing clusters", function()
    local dir = U.tmpdir()
    local src, dst = dir .. "/src.qcow2", dir .. "/dst.qcow2"
    U.must("qemu-img create -q -f qcow2 %s 32M", U.q(src))
    U.must("qemu-io -c 'write -P 1 0 8M' %s", U.q(src))
    U.must("qemu-img snapshot -c a %s", U.q(src))
    U.must("qemu-io -c 'write -P 2 1M 1M' %s", U.q(src))
    must_vdk("snapshot", "-c", "b", src)
    U.must("qemu-io -c 'write -z 2M 1M' -c 'write -P 3 20M 1M' %s", U.q(src))
    must_vdk("snapshot", "-d", "a", src)
    must_vdk("snapshot", "-c", "c", src)
    U.must("qemu-io -c 'write -P 4 0 64k' %s", U.q(src))
    must_vdk("convert", "-q", "--keep-snapshots", "-O", "qcow2", src, dst)
    check_clean(dst, "the copy")
    assert.equal(must_vdk("snapshot", "-l", src), must_vdk("snapshot", "-l", dst))
    assert.equal(U.must("qemu-img snapshot -l %s", U.q(src)), U.must("qemu-img snapshot -l %s", U.q(dst)))
    copy_agrees(dir, src, dst, { "b", "c" }, "the copy")
    -- 8 MiB of data shared by two snapshots and the disk: stored once
    local info = require("cjson").decode(U.must("qemu-img info --output=json %s", U.q(dst)))
    assert.truthy(info["actual-size"] < 16 * 1024 * 1024, tostring(info["actual-size"]))
    local code, _, err = vdk("convert", "--keep-snapshots", "-O", "raw", src, dir .. "/x.raw")
    assert.equal(1, code)
    assert.truthy(err:find("qcow2 target", 1, true), err)
  end)

  it("shares compressed clusters between snapshots in convert --keep-snapshots", function()
    local dir = U.tmpdir()
    local src, dst = dir .. "/src.qcow2", dir .. "/dst.qcow2"
    -- 4 MiB of text compresses, then three snapshots with one cluster
    -- changed between two
    U.write_file(dir .. "/data.raw", ("vdk keeps snapshots %08d\n"):rep(4 * 1024 * 1024 // 29))
    U.must("qemu-img convert -c -O qcow2 %s %s", U.q(dir .. "/data.raw"), U.q(src))
    U.must("qemu-img snapshot -c one %s", U.q(src))
    U.must("qemu-io -c 'write -P 5 1M 64k' %s", U.q(src))
    U.must("qemu-img snapshot -c two %s", U.q(src))
    U.must("qemu-io -c 'write -P 6 2M 64k' %s", U.q(src))
    U.must("qemu-img snapshot -c three %s", U.q(src))
    must_vdk("convert", "-q", "--keep-snapshots", "-O", "qcow2", src, dst)
    check_clean(dst, "the copy")
    copy_agrees(dir, src, dst, { "one", "two", "three" }, "the copy")
    -- the disk is stored once (uncompressed), not once per snapshot
    local info = require("cjson").decode(U.must("qemu-img info --output=json %s", U.q(dst)))
    assert.truthy(info["actual-size"] < 6 * 1024 * 1024, tostring(info["actual-size"]))
    -- and the summary says how much was shared
    os.remove(dst)
    local out = must_vdk("convert", "--output=json", "--keep-snapshots", "-O", "qcow2", src, dst)
    local t = require("cjson").decode(out)
    assert.truthy(t["bytes-shared"] > 3 * 4 * 1024 * 1024 // 2, out)
    assert.equal(t["virtual-size"], t["bytes-written"] + t["bytes-zeroed"] + t["bytes-skipped"]
                 + t["bytes-shared"], out)
    -- with -c, compressed: smaller still, every view the same, still shared
    local dc = dir .. "/dc.qcow2"
    must_vdk("convert", "-q", "-c", "--keep-snapshots", "-O", "qcow2", src, dc)
    check_clean(dc, "the compressed copy")
    copy_agrees(dir, src, dc, { "one", "two", "three" }, "compressed copy")
    local cinfo = require("cjson").decode(U.must("qemu-img info --output=json %s", U.q(dc)))
    assert.truthy(cinfo["actual-size"] < info["actual-size"] // 4,
                  cinfo["actual-size"] .. " vs " .. info["actual-size"])
  end)

  -- qemu-img (v3 images) shrinks an image that has snapshots: they keep
  -- their own tables and disk sizes. vdk does the same, and converts such
  -- an image with every snapshot at its own size.
  it("shrinks an image with snapshots and keeps snapshots of every disk size", function()
    local dir = U.tmpdir()
    local src, dst = dir .. "/src.qcow2", dir .. "/dst.qcow2"
    U.must("qemu-img create -q -f qcow2 %s 128M", U.q(src))
    U.must("qemu-io -c 'write -P 1 0 1M' -c 'write -P 2 100M 1M' %s", U.q(src))
    U.must("qemu-img snapshot -c big %s", U.q(src))
    U.must("qemu-img resize -q --shrink %s 64M", U.q(src))
    U.must("qemu-io -c 'write -P 3 0 64k' %s", U.q(src))
    U.must("qemu-img snapshot -c small %s", U.q(src))
    U.must("qemu-img resize -q %s 96M", U.q(src))
    must_vdk("convert", "-q", "--keep-snapshots", "-O", "qcow2", src, dst)
    check_clean(dst, "the copy")
    assert.equal(U.must("qemu-img snapshot -l %s", U.q(src)), U.must("qemu-img snapshot -l %s", U.q(dst)))
    U.must("qemu-img compare -q %s %s", U.q(src), U.q(dst))
    local views = {}
    for _, name in ipairs({ "big", "small" }) do
      for _, img in ipairs({ src, dst }) do
        local out = dir .. "/" .. name .. "-" .. #views .. ".raw"
        must_vdk("convert", "-q", "-l", name, "-O", "raw", img, out)
        views[#views + 1] = U.read_file(out)
      end
      assert.equal(name == "big" and 128 * 1024 * 1024 or 64 * 1024 * 1024, #views[#views])
      assert.is_true(views[#views - 1] == views[#views], name)
    end

    -- Shrink through the module, inside a cluster, with snapshots that
    -- share the L2 tables being cut: the same content as qemu-img's shrink,
    -- each snapshot unchanged, and qemu-img check clean.
    local a, b = dir .. "/a.qcow2", dir .. "/b.qcow2"
    U.must("cp %s %s", U.q(dst), U.q(a))
    U.must("qemu-io -c 'write -P 5 0 200k' -c 'write -P 6 90M 2M' %s", U.q(a))
    must_vdk("snapshot", "-c", "third", a)
    U.must("qemu-io -c 'write -P 7 1M 64k' %s", U.q(a))
    U.must("cp %s %s", U.q(a), U.q(b))
    local before = {}
    for _, name in ipairs({ "big", "small", "third" }) do
      local out = dir .. "/before-" .. name .. ".raw"
      must_vdk("convert", "-q", "-l", name, "-O", "raw", a, out)
      before[name] = U.read_file(out)
    end
    local size = 1000 * 1024 + 3 * 512
    local vdk_mod = require "vdk"
    local img = assert(vdk_mod.open(a, { readonly = false }))
    assert(img:resize(size, { shrink = true }))
    img:close()
    U.must("qemu-img resize -q --shrink %s %d", U.q(b), size)
    check_clean(a, "after the shrink")
    U.must("qemu-img compare -q %s %s", U.q(a), U.q(b))
    for _, name in ipairs({ "big", "small", "third" }) do
      local out = dir .. "/after-" .. name .. ".raw"
      must_vdk("convert", "-q", "-l", name, "-O", "raw", a, out)
      assert.is_true(U.read_file(out) == before[name], name)
    end
  end)

  it("refuses to resize a version 2 image that has snapshots, as qemu-img does", function()
    local dir = U.tmpdir()
    local img = dir .. "/v2.qcow2"
    U.must("qemu-img create -q -f qcow2 -o compat=0.10 %s 8M", U.q(img))
    U.must("qemu-img snapshot -c s %s", U.q(img))
    local q = U.run("qemu-img resize -q %s 16M", U.q(img))
    assert.is_false(q)
    local h = assert(require("vdk").open(img, { readonly = false }))
    local ok, msg = h:resize(16 * 1024 * 1024)
    h:close()
    assert.is_nil(ok)
    assert.truthy(msg:find("version 2", 1, true), msg)
    assert.equal(8 * 1024 * 1024, assert(require("vdk").open(img)).size)
  end)
end)
