using System.Diagnostics;
using System.CommandLine;
using System.Reflection;
using System.Text;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using OrtFinetune.Host.Plugins;

namespace OrtFinetune.Host.Configuration;

/// <summary>Exit codes of the ortfinetune executable.</summary>
public static class ExitCodes
{
    public const int Ok = 0, Usage = 1, BadInput = 2, Compile = 3, TrainingFailed = 4, SelfTestFailed = 5, Interrupted = 130;
}

/// <summary>
/// Builds the generic host shared by the verbs: configuration (appsettings.json next to the
/// executable and in the working folder, ORTFINETUNE_* environment variables, then the command line),
/// console logging, systemd integration, the plugin catalog.
/// </summary>
public static class HostSetup
{
    /// <summary>Starts this executable again with <paramref name="args"/> (a child of the benchmark or the self-check); stderr redirected.</summary>
    public static ProcessStartInfo SelfProcess(IEnumerable<string> args)
    {
        var self = Environment.ProcessPath ?? "dotnet";
        var all = new List<string>();
        if (Path.GetFileNameWithoutExtension(self).Equals("dotnet", StringComparison.OrdinalIgnoreCase))
            all.Add(typeof(HostSetup).Assembly.Location);
        all.AddRange(args);
        return new ProcessStartInfo(self, all) { UseShellExecute = false, RedirectStandardError = true };
    }

    /// <summary>
    /// Command-line options generated from <see cref="TrainSettings"/>: --batch-size maps to Train:BatchSize; the help
    /// text is the property's [Description] followed by its configuration key.
    /// </summary>
    public static List<(Option<string> Option, string Key)> SettingOptions()
    {
        var list = new List<(Option<string>, string)>();
        foreach (var p in typeof(TrainSettings).GetProperties(BindingFlags.Public | BindingFlags.Instance))
        {
            var name = "--" + Kebab(p.Name);
            var text = p.GetCustomAttribute<System.ComponentModel.DescriptionAttribute>()?.Description;
            var o = new Option<string>(name) { Description = text != null ? $"{text} [Train:{p.Name}]" : $"Train:{p.Name}", AllowMultipleArgumentsPerToken = p.PropertyType == typeof(string[]) };
            if (p.PropertyType == typeof(string[])) o.Arity = ArgumentArity.ZeroOrMore;
            list.Add((o, p.Name));
        }
        return list;
    }

    public static string Kebab(string pascal)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < pascal.Length; i++)
        {
            if (char.IsUpper(pascal[i]) && i > 0) sb.Append('-');
            sb.Append(char.ToLowerInvariant(pascal[i]));
        }
        return sb.ToString();
    }

    /// <summary>The command-line values given explicitly, as configuration keys.</summary>
    public static Dictionary<string, string?> CommandLineConfig(ParseResult r, IEnumerable<(Option<string> Option, string Key)> options)
    {
        var d = new Dictionary<string, string?>();
        foreach (var (o, key) in options)
        {
            var result = r.GetResult(o);
            if (result == null) continue;
            var tokens = result.Tokens.Select(t => t.Value).ToList();
            if (typeof(TrainSettings).GetProperty(key)!.PropertyType == typeof(string[]))
                for (int i = 0; i < tokens.Count; i++) d[$"Train:{key}:{i}"] = tokens[i];
            else d[$"Train:{key}"] = tokens.LastOrDefault();
        }
        return d;
    }

    public static HostApplicationBuilder CreateBuilder(Dictionary<string, string?> commandLine, bool verbose)
    {
        var b = Microsoft.Extensions.Hosting.Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings
        {
            ContentRootPath = AppContext.BaseDirectory,
            ApplicationName = "ortfinetune",
        });
        b.Configuration
            .AddJsonFile(Path.Combine(AppContext.BaseDirectory, "appsettings.json"), optional: true)
            .AddJsonFile(Path.Combine(Directory.GetCurrentDirectory(), "appsettings.json"), optional: true)
            .AddEnvironmentVariables("ORTFINETUNE_")
            .AddInMemoryCollection(commandLine);
        b.Logging.ClearProviders();
        b.Logging.AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss "; });
        b.Logging.AddConfiguration(b.Configuration.GetSection("Logging"));
        if (verbose) b.Logging.SetMinimumLevel(LogLevel.Debug);
        b.Services.AddSystemd();
        b.Services.AddSingleton(sp => PluginCatalog.Load(PluginFolders(b.Configuration), sp.GetRequiredService<ILoggerFactory>().CreateLogger("plugins")));
        return b;
    }

    /// <summary>
    /// Plugin folders from Plugins:Folders (appsettings.json, environment) and --plugins-dir. Relative
    /// folders from configuration are relative to the executable's folder, never to the working folder,
    /// so a plugins/ folder wherever the tool happens to run is not loaded by accident; --plugins-dir
    /// values are made absolute when the command line is parsed.
    /// </summary>
    public static IEnumerable<string> PluginFolders(IConfiguration config)
    {
        var folders = config.GetSection("Plugins:Folders").GetChildren().Select(c => c.Value).Where(v => !string.IsNullOrEmpty(v)).Cast<string>().ToList();
        if (config["Plugins:Folder"] is { Length: > 0 } single) folders.Add(single);
        if (folders.Count == 0) folders.Add("plugins");
        return folders.Select(f => Path.IsPathRooted(f) ? f : Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, f))).Distinct();
    }
}
