-- spec/shell_batch_spec.lua: the shell without a terminal: `vdk shell -e`,
-- scripts, piped input, exit codes, the module's entry point from stock
-- lua5.4, completion candidates and the pretty printer.
local U = require "support.util"
local vdk = require "vdk"
local shell = require "vdk.shell"

local dir, img_path
setup(function()
  dir = U.tmpdir()
  img_path = dir .. "/d.qcow2"
  U.must("qemu-img create -q -f qcow2 %s 4M && qemu-io -c 'write -P 0x5a 64k 64k' %s",
    U.q(img_path), U.q(img_path))
end)

describe("vdk shell -e and scripts", function()
  it("runs chunks with the image bound and prints their results", function()
    local code, out, err = U.vdk_cmd("shell", "-e", "img:header().version", "-e", "img.size",
      "-e", "x = 1", img_path)
    assert.equal(0, code, err)
    assert.equal("3\n4194304 (4 MiB, 0x400000)\n", out)
  end)

  it("binds img1, img2 for several images and opens them read-only", function()
    local code, out, err = U.vdk_cmd("shell", "-e", "img1.readonly, img2.format, img == nil",
      img_path, img_path)
    assert.equal(0, code, err)
    assert.equal("true\n\"qcow2\"\ntrue\n", out)
  end)

  it("fails with status 1 on an error, and on an image it cannot open", function()
    local code, out, err = U.vdk_cmd("shell", "-e", "error('boom')", img_path)
    assert.equal(1, code)
    assert.truthy(err:find("error: .*boom"), err)
    code, out, err = U.vdk_cmd("shell", "-e", "1", dir .. "/missing.qcow2")
    assert.equal(1, code)
    assert.truthy(err:find("missing.qcow2", 1, true), err)
  end)

  it("runs a script with its arguments after the images", function()
    local script = dir .. "/s.lua"
    U.write_file(script, 'local a, b = ...\nprint(img.format, a, b, arg[0] ~= nil)\n'
      .. 'print(img:explain(65536).answer.kind)\n')
    local code, out, err = U.vdk_cmd("shell", img_path, script, "one", "two")
    assert.equal(0, code, err)
    assert.equal("qcow2\tone\ttwo\ttrue\ndata\n", out)
  end)

  it("reads piped input: results, errors on stderr, multi-line chunks, exit(n)", function()
    local code, out, err = U.run3("printf %s | %s shell %s",
      U.q("x = 20\nx * 2 + 2\nerror('oops')\nfor i = 1, 2 do\nprint(i)\nend\nexit(3)\nprint('not reached')\n"),
      U.q(U.vdk), U.q(img_path))
    assert.equal(3, code)
    assert.equal("42\n1\n2\n", out)
    assert.truthy(err:find("error: stdin:1: oops", 1, true), err)
  end)
end)

describe("vdk.shell from stock lua5.4", function()
  it("starts with require('vdk.shell').start()", function()
    local src, build = U.abspath(U.src), U.abspath(U.build)
    local code, out, err = U.run3(
      "printf %s | LUA_PATH=%s LUA_CPATH=%s lua5.4 -e %s",
      U.q("img:header().cluster_size\n"),
      U.q(src .. "/scripts/?.lua;" .. src .. "/scripts/?/init.lua;;"),
      U.q(build .. "/lua/?.so;;"),
      U.q(("os.exit(require('vdk.shell').start{images = {%q}, history = false})"):format(img_path)))
    if code ~= 0 and err:find("ASan runtime", 1, true) then
      pending("a sanitizer build's module loads only into the vdk launcher")
      return
    end
    assert.equal(0, code, err)
    assert.equal("65536 (64 KiB, 0x10000)\n", out)
  end)
end)

describe("completion", function()
  local env, images
  setup(function() env, images = shell.new_env({ images = { img_path } }) end)
  teardown(function() for _, i in ipairs(images) do i:close() end end)

  local function has(list, s)
    for _, v in ipairs(list) do if v == s then return true end end
    return false
  end

  it("completes methods of images through their metatable", function()
    local c = shell.complete(env, "img:he")
    assert.truthy(has(c, "img:header("), table.concat(c, " "))
    assert.truthy(has(c, "img:hexdump("))
    c = shell.complete(env, "img:")
    assert.truthy(has(c, "img:explain(") and has(c, "img:read(") and has(c, "img:map_svg("))
    assert.falsy(has(c, "img:size"))
  end)

  it("completes fields, module functions, globals and keywords", function()
    assert.truthy(has(shell.complete(env, "img.si"), "img.size"))
    assert.truthy(has(shell.complete(env, "img.backing_f"), "img.backing_filename"))
    assert.truthy(has(shell.complete(env, "vdk.op"), "vdk.open("))
    assert.truthy(has(shell.complete(env, "string.fo"), "string.format("))
    assert.truthy(has(shell.complete(env, "ret"), "return"))
    assert.truthy(has(shell.complete(env, "im"), "img"))
    assert.same({}, shell.complete(env, "nosuch.x"))
  end)
end)

describe("pretty printing", function()
  it("shows offsets in hex and sizes in units", function()
    local s = vdk.pretty({ host_offset = 65536, cluster_size = 1048576, l1_size = 4096,
                           name = "x", list = { 1, 2 } })
    assert.truthy(s:find("host_offset = 0x10000", 1, true), s)
    assert.truthy(s:find("cluster_size = 1048576 (1 MiB)", 1, true), s)
    assert.truthy(s:find("l1_size = 4096", 1, true), s)
    assert.truthy(s:find('name = "x"', 1, true), s)
    assert.truthy(s:find("list = { 1, 2 }", 1, true), s)
  end)

  it("prints nested tables indented and results by their own renderer", function()
    local img <close> = assert(vdk.open(img_path))
    local s = vdk.pretty(img:info())
    assert.truthy(s:find('\n  ["format-specific"] = {\n', 1, true), s)
    local text = vdk.pretty(img:l2(0))
    assert.truthy(text:find("L2 table at 0x", 1, true), text)
    assert.truthy(text:find("host 0x", 1, true), text)
    local dump = img:hexdump(65536, 32)
    assert.equal("00010000  5a 5a 5a 5a 5a 5a 5a 5a  5a 5a 5a 5a 5a 5a 5a 5a  |ZZZZZZZZZZZZZZZZ|\n"
      .. "00010010  5a 5a 5a 5a 5a 5a 5a 5a  5a 5a 5a 5a 5a 5a 5a 5a  |ZZZZZZZZZZZZZZZZ|", dump)
    assert.truthy(img:hexdump(0, 4, { host = true }):find("|QFI.|", 1, true))
  end)
end)
