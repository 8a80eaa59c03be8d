using System.Diagnostics;
using System.IO.Compression;
using System.Text.Json;
using System.Xml.Linq;
using Xunit.Abstractions;

namespace OrtFinetune.Host.Tests;

/// <summary>
/// Child processes of the .NET SDK for the packaging tests: output read through events and a wait with a limit, so a
/// build server that keeps an inherited pipe open cannot hang the test; each step's time is logged.
/// </summary>
public sealed class Sdk(ITestOutputHelper log, string scratch)
{
    readonly Stopwatch _total = Stopwatch.StartNew();
    public readonly List<(string Step, double Seconds)> Times = new();

    /// <summary>The repository's build configuration (the test assembly's bin/&lt;Configuration&gt;), for packing with --no-build.</summary>
    public static string Configuration => TestPaths.Configuration;

    public (int Code, string Out, string Err) Run(string step, string file, IEnumerable<string> args, string workDir,
        IReadOnlyDictionary<string, string?>? env = null, TimeSpan? limit = null)
    {
        var psi = new ProcessStartInfo(file, args) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false, WorkingDirectory = workDir };
        // No first-run banners or telemetry; no MSBuild settings of the `dotnet test` that runs us.
        psi.Environment["DOTNET_NOLOGO"] = "1";
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        foreach (var k in new[] { "MSBuildExtensionsPath", "MSBuildSDKsPath", "MSBUILD_EXE_PATH", "MSBuildLoadMicrosoftTargetsReadOnly" }) psi.Environment.Remove(k);
        foreach (var (k, v) in env ?? new Dictionary<string, string?>())
            if (v is null) psi.Environment.Remove(k); else psi.Environment[k] = v;
        var o = new System.Text.StringBuilder(); var e = new System.Text.StringBuilder();
        var clock = Stopwatch.StartNew();
        using var p = new Process { StartInfo = psi };
        p.OutputDataReceived += (_, a) => { if (a.Data != null) lock (o) o.AppendLine(a.Data); };
        p.ErrorDataReceived += (_, a) => { if (a.Data != null) lock (e) e.AppendLine(a.Data); };
        p.Start();
        p.BeginOutputReadLine(); p.BeginErrorReadLine();
        var max = limit ?? TimeSpan.FromMinutes(5);
        if (!p.WaitForExit(max)) { try { p.Kill(true); } catch (InvalidOperationException) { } Assert.Fail($"{step}: {file} {string.Join(' ', args)} ran past {max}:\n{o}\n{e}"); }
        p.WaitForExit();                                    // unlike the timed wait, waits for the redirected output to end
        string so, se;
        lock (o) so = o.ToString();
        lock (e) se = e.ToString();
        Times.Add((step, clock.Elapsed.TotalSeconds));
        log.WriteLine($"[{clock.Elapsed.TotalSeconds,6:F1} s] {step}: {Path.GetFileName(file)} {string.Join(' ', args)} -> {p.ExitCode}");
        return (p.ExitCode, so, se);
    }

    /// <summary>Runs a step that must succeed; its output is in the failure message.</summary>
    public string Ok(string step, string file, IEnumerable<string> args, string workDir, IReadOnlyDictionary<string, string?>? env = null, TimeSpan? limit = null)
    {
        var (code, so, se) = Run(step, file, args, workDir, env, limit);
        Assert.True(code == 0, $"{step} failed (exit {code}):\n{Tail(so)}\n{Tail(se)}");
        return so;
    }

    /// <summary>
    /// dotnet pack of a repository project from what the test run's build left in its bin/obj (--no-build, so nothing is
    /// compiled or restored there while other tests use it), with the package written to <paramref name="feed"/> and
    /// the intermediate nuspec (and any <paramref name="extra"/> outputs) under this test's scratch folder.
    /// </summary>
    public void Pack(string project, string feed, params string[] extra)
    {
        var name = Path.GetFileNameWithoutExtension(project);
        Ok("pack " + name, "dotnet", ["pack", Path.Combine(TestPaths.Root, project), "-c", Configuration, "--no-build", "-o", feed,
            $"-p:NuspecOutputPath={Path.Combine(scratch, "nuspec", name)}/", "-nologo", .. extra], TestPaths.Root);
    }

    public void Summary()
    {
        log.WriteLine($"total {_total.Elapsed.TotalSeconds:F1} s: " + string.Join(", ", Times.Select(t => $"{t.Step} {t.Seconds:F1} s")));
    }

    public static string Tail(string s) => s.Length > 6000 ? s[^6000..] : s;

    /// <summary>The folder of the .NET installation this test runs on (for apphosts such as a tool's shim).</summary>
    public static string DotnetRoot => Path.GetFullPath(Path.Combine(Path.GetDirectoryName(typeof(object).Assembly.Location)!, "..", "..", ".."));

    /// <summary>The one package file named <paramref name="id"/>.&lt;version&gt;.nupkg in <paramref name="feed"/>, and that version.</summary>
    public static (string Path, string Version) Package(string feed, string id)
    {
        var hits = Directory.GetFiles(feed, id + ".*.nupkg")
            .Select(f => (Path: f, Version: Path.GetFileNameWithoutExtension(f)[(id.Length + 1)..]))
            .Where(x => char.IsDigit(x.Version[0])).ToList();
        Assert.True(hits.Count == 1, $"expected one {id} package in {feed}, found: {string.Join(", ", Directory.GetFiles(feed).Select(Path.GetFileName))}");
        return hits[0];
    }

    public static string[] Entries(string nupkg)
    {
        using var z = ZipFile.OpenRead(nupkg);
        return z.Entries.Select(x => x.FullName).ToArray();
    }
}

/// <summary>
/// The plugin SDK as an author outside this repository meets it: the OrtFinetune.Abstractions package (with
/// OrtFinetune.Onnx) and the OrtFinetune.Templates package are packed into a local folder feed, the template is
/// installed into a private template hive, a plugin of each kind is made from it in a folder outside the repository,
/// built against the packages from that feed only, dropped into a plugins folder, and the real host trains with the
/// three of them at once (their dataset, their model and their precision policy).
/// </summary>
[Collection(PackagingCollection.Name)]
public class PluginSdkTests(ITestOutputHelper log) : IDisposable
{
    readonly string _tmp = Directory.CreateTempSubdirectory("ortfinetune-sdk-").FullName;
    public void Dispose() { try { Directory.Delete(_tmp, true); } catch (IOException) { } }

    string Dir(string name) => Directory.CreateDirectory(Path.Combine(_tmp, name)).FullName;

    [Fact]
    public void TemplatePluginsBuiltAgainstThePackagesTrainInTheHost()
    {
        var sdk = new Sdk(log, Dir("scratch"));
        var feed = Dir("feed");
        sdk.Pack("src/Onnx/OrtFinetune.Onnx.csproj", feed);
        sdk.Pack("src/Abstractions/OrtFinetune.Abstractions.csproj", feed);
        sdk.Pack("templates/OrtFinetune.Templates.csproj", feed, $"-p:TemplateStagingDir={Dir("scratch/template")}/");

        // The contract package: the host's contract version, docs, readme, symbols, and the IR package it depends on.
        var hostContracts = typeof(OrtFinetune.Abstractions.IPlugin).Assembly.GetName().Version!;
        var (abstractions, version) = Sdk.Package(feed, "OrtFinetune.Abstractions");
        Assert.Equal(hostContracts.ToString(3), version);
        Assert.True(File.Exists(Path.ChangeExtension(abstractions, ".snupkg")), "no symbols package");
        var entries = Sdk.Entries(abstractions);
        foreach (var e in new[] { "lib/net10.0/OrtFinetune.Abstractions.dll", "lib/net10.0/OrtFinetune.Abstractions.xml", "README.md" })
            Assert.Contains(e, entries);
        Assert.Equal(version, Sdk.Package(feed, "OrtFinetune.Onnx").Version);
        var (templates, templatesVersion) = Sdk.Package(feed, "OrtFinetune.Templates");
        Assert.Equal(version, templatesVersion);

        // dotnet new install into a private hive (the user's template cache is left alone), then one plugin per kind.
        var work = Dir("work");
        var newEnv = new Dictionary<string, string?> { ["DOTNET_CLI_HOME"] = Dir("clihome") };
        var hive = Path.Combine(_tmp, "hive");
        sdk.Ok("dotnet new install", "dotnet", ["new", "install", templates, "--debug:custom-hive", hive], work, newEnv);
        var kinds = new (string Kind, string Name)[] { ("dataset", "MyData"), ("model", "MyModel"), ("precision", "MyPolicy") };
        foreach (var (kind, name) in kinds)
        {
            sdk.Ok("dotnet new " + kind, "dotnet", ["new", "ortfinetune-plugin", "--kind", kind, "-n", name, "-o", Path.Combine(work, name), "--no-update-check", "--debug:custom-hive", hive], work, newEnv);
            var project = XDocument.Load(Path.Combine(work, name, name + ".csproj"));
            var reference = project.Descendants("PackageReference").Single(r => (string?)r.Attribute("Include") == "OrtFinetune.Abstractions");
            Assert.Equal(version, (string?)reference.Attribute("Version"));
            Assert.Equal("runtime", (string?)reference.Attribute("ExcludeAssets"));
            // Only the chosen kind's code is there.
            Assert.Equal(new[] { "Dataset.cs", "Model.cs", "Precision.cs" }.Where(f => f.StartsWith(kind, StringComparison.OrdinalIgnoreCase)),
                Directory.GetFiles(Path.Combine(work, name), "*.cs").Select(Path.GetFileName).Order());
        }

        // Restore from the local feed only; packages the repository already restored (OnnxSharp, Google.Protobuf,
        // Microsoft.Extensions.*) come from the machine's packages folder as a read-only fallback, and what this
        // restore extracts (the packages just made) goes to a folder of this test, never into the machine's cache.
        var machinePackages = sdk.Ok("nuget locals", "dotnet", ["nuget", "locals", "global-packages", "--list"], work)
            .Split('\n').Select(l => l.Trim()).First(l => l.StartsWith("global-packages:", StringComparison.Ordinal))["global-packages:".Length..].Trim();
        File.WriteAllText(Path.Combine(work, "nuget.config"), $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <packageSources><clear /><add key="local" value="{feed}" /></packageSources>
              <fallbackPackageFolders><clear /><add key="machine" value="{machinePackages}" /></fallbackPackageFolders>
            </configuration>
            """);
        File.WriteAllText(Path.Combine(work, "plugins.slnx"),
            "<Solution>\n" + string.Concat(kinds.Select(k => $"  <Project Path=\"{k.Name}/{k.Name}.csproj\" />\n")) + "</Solution>\n");
        var plugins = Path.Combine(_tmp, "plugins");
        var buildEnv = new Dictionary<string, string?> { ["NUGET_PACKAGES"] = Dir("packages") };
        sdk.Ok("build the plugins", "dotnet", ["build", "plugins.slnx", "-c", "Release", $"-p:PluginsDir={plugins}", "-nodeReuse:false", "-nologo"], work, buildEnv);
        foreach (var (_, name) in kinds)
        {
            Assert.True(File.Exists(Path.Combine(plugins, name, name + ".dll")), $"{name}.dll was not copied to {plugins}/{name}");
            // The contracts are the host's: not copied next to the plugin.
            foreach (var contract in new[] { "OrtFinetune.Abstractions.dll", "OrtFinetune.Onnx.dll" })
                Assert.False(File.Exists(Path.Combine(plugins, name, contract)), $"{name} ships its own {contract}");
        }

        // The real host, with the built-in plugins and the three new ones.
        string[] dirs = ["--plugins-dir", TestPaths.BuiltInPlugins, "--plugins-dir", plugins];
        var listed = sdk.Ok("ortfinetune plugins", "dotnet", [TestPaths.HostDll, "plugins", .. dirs], work);
        foreach (var what in new[] { "dataset mydata", "model mymodel", "IPrecisionPolicy mypolicy" }) Assert.Contains(what, listed);
        var run = Path.Combine(_tmp, "run");
        var train = sdk.Ok("ortfinetune train", "dotnet", [TestPaths.HostDll, "train", .. dirs, "--dataset", "mydata", "--model", "mymodel", "--precision", "mypolicy",
            "--epochs", "1", "--limit", "256", "--output", run], work, limit: TimeSpan.FromMinutes(3));
        log.WriteLine(Sdk.Tail(train));
        using (var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(run, "summary.json"))))
        {
            var s = doc.RootElement;
            Assert.Equal("mydata", s.GetProperty("dataset").GetString());
            Assert.Equal("mymodel", s.GetProperty("model").GetString());
            Assert.Equal("mypolicy", s.GetProperty("precision").GetString());
            Assert.Equal(4096, s.GetProperty("loss_scale").GetDouble());      // the template policy's own scaler
            Assert.True(double.IsFinite(s.GetProperty("final_loss").GetDouble()));
        }
        Assert.True(File.Exists(Path.Combine(run, "model.onnx")));

        // The same dataset plugin as if built against the next major version of the package: refused by the CLI,
        // naming the plugin and both versions.
        var future = new Version(hostContracts.Major + 1, 0, 0);
        var futureDir = Directory.CreateDirectory(Path.Combine(_tmp, "future", "MyData")).FullName;
        File.WriteAllBytes(Path.Combine(futureDir, "MyData.dll"),
            PluginContractVersionTests.WithAbstractionsReference(File.ReadAllBytes(Path.Combine(plugins, "MyData", "MyData.dll")), future));
        var (code, stdout, _) = sdk.Run("plugins, major version 2", "dotnet", [TestPaths.HostDll, "plugins", "--plugins-dir", Path.GetDirectoryName(futureDir)!], work);
        Assert.Equal(2, code);
        // (MyData 1.0.0: the assembly version of a project that sets none.)
        Assert.Contains($"plugin 'MyData' (MyData 1.0.0, {Path.Combine(futureDir, "MyData.dll")}) was built against OrtFinetune.Abstractions {future.ToString(3)}, "
                        + $"but this ortfinetune has OrtFinetune.Abstractions {hostContracts.ToString(3)}", stdout);
        sdk.Summary();
    }
}

/// <summary>
/// `ortfinetune` as a dotnet tool: the host packed (PackAsTool) into a local folder feed, installed into a private tool
/// path from that feed at the packed version, and run from a working folder outside the repository: the tool finds its
/// built-in plugins, settings and ONNX Runtime's native library in its own folder.
/// </summary>
[Collection(PackagingCollection.Name)]
public class ToolPackageTests(ITestOutputHelper log) : IDisposable
{
    readonly string _tmp = Directory.CreateTempSubdirectory("ortfinetune-tool-").FullName;
    public void Dispose() { try { Directory.Delete(_tmp, true); } catch (IOException) { } }

    string Dir(string name) => Directory.CreateDirectory(Path.Combine(_tmp, name)).FullName;

    [Fact]
    public void TheInstalledToolTrainsFromAnyFolder()
    {
        var sdk = new Sdk(log, Dir("scratch"));
        var feed = Dir("feed");
        // The publish folder the tool package is made from: a folder of this test (the default is the project's bin).
        // Packing still writes its own intermediates (DotnetToolSettings.xml, the publish deps.json and file list) under
        // src/Host/obj; nothing else reads them, and the host's bin (which other tests run) is only read.
        sdk.Pack("src/Host/OrtFinetune.Host.csproj", feed, $"-p:PublishDir={Dir("scratch/publish")}/");
        var (package, version) = Sdk.Package(feed, "ortfinetune");
        var entries = Sdk.Entries(package);
        const string root = "tools/net10.0/any/";
        foreach (var e in new[] { "ortfinetune.dll", "DotnetToolSettings.xml", "appsettings.json", "runtimes/linux-x64/native/libonnxruntime.so",
                                  "plugins/OrtFinetune.Plugins.Datasets/OrtFinetune.Plugins.Datasets.dll", "plugins/OrtFinetune.Plugins.Models/OrtFinetune.Plugins.Models.dll",
                                  "plugins/OrtFinetune.Plugins.Precision/OrtFinetune.Plugins.Precision.dll", "selftest/autodiff/mlp/model.onnx" })
            Assert.Contains(root + e, entries);
        Assert.DoesNotContain(entries, e => e.StartsWith(root + "runtimes/android/", StringComparison.Ordinal) || e.StartsWith(root + "runtimes/ios/", StringComparison.Ordinal));
        log.WriteLine($"{Path.GetFileName(package)}: {new FileInfo(package).Length / 1e6:F1} MB, {entries.Length} files");

        // Installed from the local feed only, at the packed version, into a tool path of this test (packages it
        // downloads go to this test's folder too, not the machine's cache).
        var tools = Path.Combine(_tmp, "tools");
        var work = Dir("work");
        File.WriteAllText(Path.Combine(work, "nuget.config"), $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <packageSources><clear /><add key="local" value="{feed}" /></packageSources>
            </configuration>
            """);
        var env = new Dictionary<string, string?> { ["NUGET_PACKAGES"] = Dir("packages"), ["DOTNET_ROOT"] = Sdk.DotnetRoot };
        sdk.Ok("dotnet tool install", "dotnet", ["tool", "install", "ortfinetune", "--tool-path", tools, "--add-source", feed, "--version", version,
            "--configfile", Path.Combine(work, "nuget.config")], work, env);
        var exe = Path.Combine(tools, "ortfinetune");
        Assert.True(File.Exists(exe), $"no {exe}");

        // Plain `ortfinetune train` in a folder of its own: built-in shapes dataset, default model, runs/ under the working folder.
        var train = sdk.Ok("ortfinetune train", exe, ["train", "--epochs", "1", "--limit", "256"], work, env, TimeSpan.FromMinutes(3));
        log.WriteLine(Sdk.Tail(train));
        var run = Assert.Single(Directory.GetDirectories(Path.Combine(work, "runs")));
        using (var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(run, "summary.json"))))
        {
            var s = doc.RootElement;
            Assert.Equal("shapes", s.GetProperty("dataset").GetString());
            Assert.Equal(1, s.GetProperty("epochs").GetInt32());
            Assert.True(double.IsFinite(s.GetProperty("final_loss").GetDouble()));
        }
        foreach (var f in new[] { "model.onnx", "metrics.jsonl", "checkpoints/last.ckpt" }) Assert.True(File.Exists(Path.Combine(run, f)), $"no {f} in {run}");
        // Its plugins are the ones inside the tool, not the repository's.
        var listed = sdk.Ok("ortfinetune plugins", exe, ["plugins"], work, env);
        Assert.Contains(Path.Combine(tools, ".store", "ortfinetune"), listed);
        Assert.DoesNotContain(TestPaths.Root, listed);
        sdk.Summary();
    }
}

/// <summary>
/// The packaging tests pack, build and install one after the other, and apart from every other test (each is CPU-heavy:
/// beside them the timing limits of the signal tests were missed on 2 cores).
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class PackagingCollection
{
    public const string Name = "packaging";
}
